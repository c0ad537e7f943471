"""Real browser headers for the scrapers (runbook 000 "Browser Fingerprints"): generate,
normalise, check consistency.

The sets come from browserforge (a Bayesian network over real browser traffic, data shipped
in the apify_fingerprint_datapoints package, so nothing is downloaded at run time). Its raw
sets are not always consistent (browserforge 1.2.4 shifts the Sec-Fetch-* values between
fields, sends a Chrome user agent without its client hints, mixes bot user agents in), so
every set is normalised for a top-level navigation and then checked; a set that fails is
rejected and another one is drawn, a bounded number of times.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from browserforge.headers import HeaderGenerator

MAX_HEADERS = 24
"""Headers in one published set at most (a browser sends about 12 on a navigation)."""
MAX_NAME_CHARS = 64
"""Characters of one header name at most."""
MAX_VALUE_CHARS = 512
"""Characters of one header value at most (a user agent is about 150)."""
MAX_SET_BYTES = 4096
"""Bytes of a whole set, as JSON, at most."""
MAX_ATTEMPTS = 30
"""Sets drawn at most before giving up on a fresh, consistent one."""

NAVIGATION = {
    "Sec-Fetch-Site": "none",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-User": "?1",
    "Sec-Fetch-Dest": "document",
}
"""What a browser sends on a top-level navigation typed or opened by the user."""
PLATFORM = {
    "windows": "Windows",
    "macos": "macOS",
    "linux": "Linux",
    "android": "Android",
    "ios": "iOS",
}
"""sec-ch-ua-platform per operating system (without its quotes)."""
BRAND = {"chrome": "Google Chrome", "edge": "Microsoft Edge"}
"""The sec-ch-ua brand a Chromium browser names itself with."""
# Hop-by-hop and per-request headers: the scraper's HTTP client owns them.
_DROPPED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "host",
        "content-length",
        "transfer-encoding",
        "upgrade",
        "cookie",
    }
)
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_A_BROWSER = re.compile(r"bot|crawl|spider|headless|compatible;|python|curl|wget", re.I)
_OTHER_CHROMIUM = re.compile(r"\b(OPR|YaBrowser|SamsungBrowser|CriOS|FxiOS|EdgiOS|Vivaldi)/")
_EDGE = re.compile(r"\bEdgA?/(\d+)\.")
_CHROME = re.compile(r"\bChrome/(\d+)\.")
_FIREFOX = re.compile(r"\brv:(\d+)\.\d+\) Gecko/[\d.]+ Firefox/(\d+)\.")
_SAFARI = re.compile(r"\bVersion/(\d+)(?:\.\d+)* (?:Mobile/\w+ )?Safari/[\d.]+$")
_BRANDS = re.compile(r'"([^"]{1,64})";\s*v="(\d{1,5})"')


@dataclass(frozen=True)
class Identity:
    """What a user agent says it is."""

    browser: str
    os: str
    mobile: bool
    major: int  # the browser's own major version
    engine_major: int | None = None  # Chromium's major version (Chrome and Edge)


def _os_of(ua: str) -> str | None:
    for token, name in (
        ("Windows NT", "windows"),
        ("iPhone", "ios"),
        ("iPad", "ios"),
        ("Android", "android"),
        ("Macintosh", "macos"),
        ("X11; Linux", "linux"),
        ("X11; Ubuntu", "linux"),
    ):
        if token in ua:
            return name
    return None


def identify(ua: str) -> Identity | None:
    """Browser family, OS, mobile and major version from a user agent; None when it is not
    one of the four browsers on a known OS (a bot, an embedded browser, an odd build)."""
    system = _os_of(ua)
    if system is None or not ua.startswith("Mozilla/5.0 (") or _NOT_A_BROWSER.search(ua):
        return None
    mobile = "Mobile" in ua
    chrome = _CHROME.search(ua)
    if chrome and not _OTHER_CHROMIUM.search(ua):
        edge = _EDGE.search(ua)
        engine = int(chrome.group(1))
        if edge:
            return Identity("edge", system, mobile, int(edge.group(1)), engine)
        return Identity("chrome", system, mobile, engine, engine)
    firefox = _FIREFOX.search(ua)
    if firefox and firefox.group(1) == firefox.group(2):
        return Identity("firefox", system, mobile, int(firefox.group(2)))
    safari = _SAFARI.search(ua)
    if safari and not chrome and system in ("macos", "ios"):
        return Identity("safari", system, mobile, int(safari.group(1)))
    return None


def accept_language(locales: Sequence[str]) -> str:
    """'en-US,de;q=0.9,fr;q=0.8', as Chromium writes it (quality falls by 0.1 per step)."""
    parts = [locales[0]] + [f"{loc};q={max(1, 9 - n) / 10:g}" for n, loc in enumerate(locales[1:])]
    return ",".join(parts)


def normalise(raw: Mapping[str, str], locales: Sequence[str]) -> dict[str, str]:
    """A raw set made fit for a top-level navigation, in the order given: duplicates (in any
    case) and hop-by-hop headers dropped, Sec-Fetch-* set to NAVIGATION (for browsers that
    send them), Upgrade-Insecure-Requests 1, Accept-Language from the configured locales."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in raw.items():
        low = str(name).lower()
        if low in seen or low in _DROPPED:
            continue
        seen.add(low)
        out[str(name)] = str(value)
    ident = identify(_get(out, "user-agent") or "")
    fetch = ident is not None and ident.browser != "safari"  # Safari's data sends none
    for name, value in NAVIGATION.items():
        if fetch or _get(out, name) is not None:
            _put(out, name, value)
    _put(out, "Upgrade-Insecure-Requests", "1")
    _put(out, "Accept-Language", accept_language(locales))
    return out


def _get(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def _put(headers: dict[str, str], name: str, value: str) -> None:
    """Set a header in place (keeping its spelling and position), or add it at the end."""
    key = next((k for k in headers if k.lower() == name.lower()), name)
    headers[key] = value


def size_problems(headers: Mapping[str, str]) -> list[str]:
    """Why a set is too big or malformed to publish (empty: it is not)."""
    problems = []
    if len(headers) > MAX_HEADERS:
        problems.append(f"{len(headers)} headers, at most {MAX_HEADERS}")
    for name, value in list(headers.items())[: MAX_HEADERS + 1]:
        if not isinstance(name, str) or not isinstance(value, str):
            problems.append("header names and values must be strings")
        elif len(name) > MAX_NAME_CHARS or not _TOKEN.match(name):
            problems.append(f"header name {name[:MAX_NAME_CHARS]!r} is not a short HTTP token")
        elif len(value) > MAX_VALUE_CHARS or _CONTROL.search(value):
            problems.append(f"{name}: value longer than {MAX_VALUE_CHARS} or with control chars")
    if not problems and sum(len(k) + len(v) + 8 for k, v in headers.items()) > MAX_SET_BYTES:
        problems.append(f"the set is larger than {MAX_SET_BYTES} bytes")
    return problems


def problems(
    headers: Mapping[str, str], browsers: Sequence[str], systems: Sequence[str]
) -> list[str]:
    """Why a set is not a consistent top-level navigation of an allowed browser (empty: it is)."""
    found = size_problems(headers)
    if found:
        return found
    ua = _get(headers, "user-agent")
    ident = identify(ua or "")
    if ident is None:
        return [f"user agent {ua!r} is not a known browser on a known OS"]
    if ident.browser not in browsers:
        found.append(f"browser {ident.browser} is not allowed ({', '.join(browsers)})")
    if ident.os not in systems:
        found.append(f"OS {ident.os} is not allowed ({', '.join(systems)})")
    found += _client_hints(headers, ident) + _fetch_metadata(headers, ident)
    accept = _get(headers, "accept") or ""
    if not accept.startswith("text/html"):
        found.append(f"Accept {accept!r} is not a page's")
    for name in ("Accept-Language", "Accept-Encoding"):
        if not _get(headers, name):
            found.append(f"{name} missing")
    if _get(headers, "upgrade-insecure-requests") != "1":
        found.append("Upgrade-Insecure-Requests is not 1")
    return found


def _client_hints(headers: Mapping[str, str], ident: Identity) -> list[str]:
    """Chrome and Edge send sec-ch-ua naming themselves and Chromium with the user agent's
    versions, and its platform and mobile flag; Firefox and Safari send no client hints."""
    hints = {k.lower(): v for k, v in headers.items() if k.lower().startswith("sec-ch-ua")}
    if ident.browser not in BRAND:
        return [f"{ident.browser} sends no client hints: {sorted(hints)}"] if hints else []
    if "sec-ch-ua" not in hints:
        return [f"{ident.browser} user agent without sec-ch-ua"]
    brands = dict(_BRANDS.findall(hints["sec-ch-ua"]))
    found = []
    if brands.get(BRAND[ident.browser]) != str(ident.major):
        found.append(
            f"sec-ch-ua {hints['sec-ch-ua']!r} does not name {BRAND[ident.browser]} {ident.major}"
        )
    if brands.get("Chromium") != str(ident.engine_major):
        found.append(f"sec-ch-ua does not name Chromium {ident.engine_major}")
    if hints.get("sec-ch-ua-mobile") != ("?1" if ident.mobile else "?0"):
        found.append(
            f"sec-ch-ua-mobile {hints.get('sec-ch-ua-mobile')!r} but mobile={ident.mobile}"
        )
    if hints.get("sec-ch-ua-platform") != f'"{PLATFORM[ident.os]}"':
        found.append(f"sec-ch-ua-platform {hints.get('sec-ch-ua-platform')!r} on {ident.os}")
    return found


def _fetch_metadata(headers: Mapping[str, str], ident: Identity) -> list[str]:
    """Chrome, Edge and Firefox send all four Sec-Fetch-* headers on a navigation; any that
    are sent carry NAVIGATION's values."""
    found = []
    for name, value in NAVIGATION.items():
        sent = _get(headers, name)
        if sent is None and ident.browser != "safari":
            found.append(f"{name} missing")
        elif sent is not None and sent != value:
            found.append(f"{name} is {sent!r}, a navigation sends {value!r}")
    return found


@dataclass
class Generated:
    """A fresh set, or None with why every draw was rejected."""

    headers: dict[str, str] | None
    attempts: int
    new_user_agent: bool = False
    rejected: Counter[str] = field(default_factory=Counter)


Source = Callable[[], Mapping[str, str]]


def generate(
    browsers: Sequence[str],
    systems: Sequence[str],
    locales: Sequence[str],
    previous: Mapping[str, str] | None,
    *,
    source: Source | None = None,
    attempts: int = MAX_ATTEMPTS,
) -> Generated:
    """Draw sets until one is consistent and has another user agent than ``previous``;
    failing that, the first consistent set that differs from it in any header."""
    draw = source or browserforge_source(tuple(browsers), tuple(systems), tuple(locales))
    out = Generated(None, 0)
    fallback: dict[str, str] | None = None
    for n in range(1, attempts + 1):
        out.attempts = n
        try:
            headers = normalise(draw(), locales)
        except ValueError as exc:  # browserforge: "No headers based on this input..."
            out.rejected[f"browserforge: {exc}"[:120]] += 1
            continue
        found = problems(headers, browsers, systems)
        if found:
            out.rejected[found[0][:120]] += 1
        elif previous is not None and headers == dict(previous):
            out.rejected["same as the published set"] += 1
        elif previous is None or _get(headers, "user-agent") != _get(previous, "user-agent"):
            out.headers, out.new_user_agent = headers, True
            return out
        elif fallback is None:
            fallback = headers
    out.headers = fallback
    return out


@functools.lru_cache(maxsize=8)
def browserforge_source(
    browsers: tuple[str, ...], systems: tuple[str, ...], locales: tuple[str, ...]
) -> Source:
    """Raw sets from browserforge for these browsers and systems (HTTP/1.1 header names)."""
    devices = [
        d
        for d, oses in (("desktop", {"windows", "macos", "linux"}), ("mobile", {"android", "ios"}))
        if oses & set(systems)
    ]
    generator = HeaderGenerator(
        browser=list(browsers),
        os=list(systems),
        device=devices,
        locale=list(locales),
        http_version=1,
    )

    def draw() -> Mapping[str, str]:
        return dict(generator.generate())

    return draw
