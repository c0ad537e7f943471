"""regenerate_headers (runbook 000 "Browser Fingerprints") against a real redis-server and
real files; the header sets come from browserforge's shipped data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from remediation import browser_headers as bh
from remediation.actions.headers import (
    PREVIOUS_SUFFIX,
    RegenerateHeadersParams,
    read_published,
    regenerate_headers,
)
from remediation.context import ActionContext, CheckContext
from remediation.errors import ActionFailed, Refused
from remediation.findings import ActionResult
from remediation.logging import get_logger
from remediation.registry import get_action
from remediation.runner import Runner
from tests.support.runner import Recorder
from tests.support.services import RedisServer

KEY = "scraping:headers"
ALL_BROWSERS = ["chrome", "edge", "firefox", "safari"]
ALL_OS = ["windows", "macos", "linux", "android", "ios"]
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/147.0.0.0 Safari/537.36"
)
FIREFOX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:150.0) Gecko/20100101 Firefox/150.0"


def chrome_set(**changes: str | None) -> dict[str, str]:
    """A consistent Chrome 147 on Windows navigation; a change of None removes the header."""
    headers = {
        "sec-ch-ua": '"Google Chrome";v="147", "Not.A/Brand";v="8", "Chromium";v="147"',
        "sec-ch-ua-mobile": "?0",
        "sec-ch-ua-platform": '"Windows"',
        "Upgrade-Insecure-Requests": "1",
        "User-Agent": CHROME_UA,
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        **bh.NAVIGATION,
        "Accept-Encoding": "gzip, deflate, br, zstd",
        "Accept-Language": "en-US",
    }
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


def run(s: Any, key: str = "", **kw: Any) -> ActionResult:
    ctx = ActionContext(s, get_logger(), idempotency_key=key)
    return regenerate_headers(ctx, RegenerateHeadersParams(**kw))


def published(r: redis.Redis, key: str = KEY) -> dict[str, str] | None:
    return read_published(r, key)[1]


# --- the library, offline ------------------------------------------------------------------

OFFLINE = """
import socket
def refuse(*a, **k):
    raise OSError("network use attempted")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from remediation import browser_headers as bh
made = bh.generate(["chrome", "edge", "firefox", "safari"], ["windows", "macos", "linux"],
                   ["en-US"], None)
assert made.headers is not None, made
print(made.headers["User-Agent"])
"""


def test_header_data_loads_and_generates_with_no_network() -> None:
    """In a process where every socket connection raises, browserforge still loads its data
    (shipped in apify_fingerprint_datapoints) and a consistent set is generated."""
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("Mozilla/5.0 (")


def test_browserforge_sets_are_repaired_into_consistent_navigations() -> None:
    """Raw sets from browserforge (Sec-Fetch-* values shifted between fields in 1.2.4) come
    out of normalise with a navigation's values; most then pass every consistency check."""
    draw = bh.browserforge_source(tuple(ALL_BROWSERS), tuple(ALL_OS), ("en-US", "de"))
    passed = 0
    for _ in range(200):
        headers = bh.normalise(draw(), ["en-US", "de"])
        fetch = {k: v for k, v in headers.items() if k.lower().startswith("sec-fetch")}
        assert fetch in ({}, bh.NAVIGATION)
        assert headers["Accept-Language"] == "en-US,de;q=0.9"
        assert "Connection" not in headers
        assert len({k.lower() for k in headers}) == len(headers)
        passed += not bh.problems(headers, ALL_BROWSERS, ALL_OS)
    assert passed >= 150  # the rest are bots and odd builds in the data, rejected below


def test_normalise_fixes_shifted_fetch_metadata_and_drops_duplicates() -> None:
    """The shifted values seen from browserforge become a navigation's; a second spelling of
    a header and hop-by-hop headers are dropped."""
    raw = chrome_set(
        Sec_Fetch_Site="?1",
        Sec_Fetch_Mode="same-site",
        Sec_Fetch_User="document",
        Sec_Fetch_Dest="navigate",
        Upgrade_Insecure_Requests=None,
    )
    raw = {"Connection": "keep-alive", **raw, "upgrade-insecure-requests": "1"}
    assert bh.problems(raw, ALL_BROWSERS, ALL_OS) != []
    fixed = bh.normalise(raw, ["en-US"])
    assert fixed == chrome_set(Upgrade_Insecure_Requests=None) | {"upgrade-insecure-requests": "1"}
    assert bh.problems(fixed, ALL_BROWSERS, ALL_OS) == []


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (chrome_set(sec_ch_ua=None), "without sec-ch-ua"),
        (chrome_set(sec_ch_ua='"Google Chrome";v="146", "Chromium";v="147"'), "Google Chrome 147"),
        (chrome_set(sec_ch_ua='"Brave";v="147", "Chromium";v="147"'), "Google Chrome 147"),
        (chrome_set(sec_ch_ua='"Google Chrome";v="147", "Chromium";v="146"'), "Chromium 147"),
        (chrome_set(sec_ch_ua_platform='"macOS"'), "sec-ch-ua-platform"),
        (chrome_set(sec_ch_ua_mobile="?1"), "sec-ch-ua-mobile"),
        (
            chrome_set(User_Agent=FIREFOX_UA, sec_ch_ua_mobile=None, sec_ch_ua_platform=None),
            "firefox sends no client hints",
        ),
        (
            chrome_set(User_Agent=CHROME_UA.replace("Gecko)", "Gecko; compatible; pageburst)")),
            "not a known browser",
        ),
        (chrome_set(User_Agent="Googlebot/2.1 (+http://www.google.com/bot.html)"), "not a known"),
        (chrome_set(Sec_Fetch_Site="?1"), "Sec-Fetch-Site is '?1'"),
        (chrome_set(Sec_Fetch_Dest=None), "Sec-Fetch-Dest missing"),
        (chrome_set(Accept="*/*"), "not a page's"),
        (chrome_set(Upgrade_Insecure_Requests=None), "Upgrade-Insecure-Requests"),
        (chrome_set(Accept_Language="x" * (bh.MAX_VALUE_CHARS + 1)), "value longer than"),
        (chrome_set(Accept_Language="en\r\nX-Injected: 1"), "control chars"),
        (chrome_set(**{f"X-Pad-{n}": "1" for n in range(bh.MAX_HEADERS)}), "headers, at most"),
        (chrome_set(**{"Bad Name": "1"}), "not a short HTTP token"),
    ],
)
def test_inconsistent_or_oversized_sets_are_rejected(headers: dict[str, str], why: str) -> None:
    """Each broken set is rejected with a reason that names what is wrong."""
    found = bh.problems(headers, ALL_BROWSERS, ALL_OS)
    assert any(why in p for p in found), found


def test_a_browser_or_os_outside_the_allowed_ones_is_rejected() -> None:
    """Narrowing holds even when the generator relaxes its constraints."""
    assert bh.problems(chrome_set(), ALL_BROWSERS, ALL_OS) == []
    assert "browser chrome is not allowed" in bh.problems(chrome_set(), ["firefox"], ALL_OS)[0]
    assert "OS windows is not allowed" in bh.problems(chrome_set(), ALL_BROWSERS, ["linux"])[0]


def test_generation_is_bounded_and_never_repeats_the_published_set() -> None:
    """A source that only repeats the published set gives nothing after MAX_ATTEMPTS draws;
    one that changes only Accept-Encoding is used when no other user agent comes."""
    same = bh.generate(ALL_BROWSERS, ALL_OS, ["en-US"], chrome_set(), source=chrome_set)
    assert same.headers is None and same.attempts == bh.MAX_ATTEMPTS
    assert same.rejected == {"same as the published set": bh.MAX_ATTEMPTS}
    other = bh.generate(
        ALL_BROWSERS,
        ALL_OS,
        ["en-US"],
        chrome_set(),
        source=lambda: chrome_set(Accept_Encoding="gzip"),
    )
    assert other.headers == chrome_set(Accept_Encoding="gzip") and not other.new_user_agent
    huge = bh.generate(
        ALL_BROWSERS,
        ALL_OS,
        ["en-US"],
        None,
        source=lambda: chrome_set(User_Agent=CHROME_UA + " " + "x" * 600),
    )
    assert huge.headers is None and "value longer than" in next(iter(huge.rejected))


# --- the action, on a real Redis and real files ---------------------------------------------


def test_each_run_publishes_a_fresh_consistent_set_and_keeps_the_previous(
    settings_env: Any, r: redis.Redis
) -> None:
    """First run: version 1, nothing to keep. Second run: a different set, version 2, and
    version 1 kept whole in KEY:previous for rollback."""
    s = settings_env()
    first = run(s)
    assert first.ok and first.detail["version"] == "1", first.summary
    v1 = published(r)
    assert v1 is not None and bh.problems(v1, ALL_BROWSERS, ["windows", "macos", "linux"]) == []
    assert r.exists(KEY + PREVIOUS_SUFFIX) == 0
    assert r.hget(KEY, "user_agent").decode() == v1["User-Agent"] == first.detail["user_agent"]
    second = run(s)
    assert second.ok and second.detail["version"] == "2", second.summary
    v2 = published(r)
    assert v2 is not None and v2 != v1
    assert published(r, KEY + PREVIOUS_SUFFIX) == v1
    assert r.hget(KEY + PREVIOUS_SUFFIX, "version") == b"1"
    assert second.detail["previous_user_agent"] == v1["User-Agent"]


def test_a_redelivered_step_publishes_once(settings_env: Any, r: redis.Redis) -> None:
    """The same idempotency key twice: the second call finds its set already published."""
    s = settings_env()
    run(s, key="step-1")
    again = run(s, key="step-1")
    assert (again.changed, again.detail["outcome"]) == (False, "already_applied")
    assert r.hget(KEY, "version") == b"1" and r.exists(KEY + PREVIOUS_SUFFIX) == 0


def test_narrowed_call_publishes_only_that_browser_and_os(
    settings_env: Any, r: redis.Redis
) -> None:
    """browser=firefox, os=linux: a Firefox on Linux set, without client hints."""
    s = settings_env()
    done = run(s, browser="firefox", os="linux")
    assert done.ok, done.summary
    headers = published(r)
    assert headers is not None and "Firefox/" in headers["User-Agent"]
    assert "Linux x86_64" in headers["User-Agent"] and r.hget(KEY, "os") == b"linux"
    assert not any(k.lower().startswith("sec-ch-ua") for k in headers)
    assert r.hget(KEY, "browser") == b"firefox"


def test_json_file_is_written_atomically_with_the_previous_set_and_other_keys_kept(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """The file keeps the scrapers' own keys, holds the published set and the one before it."""
    path = tmp_path / "scraping_config.json"
    path.write_text(json.dumps({"min_delay": 2.0, "sites": ["a"]}))
    s = settings_env(REMEDIATION_HEADERS__JSON_FILE=str(path))
    run(s)
    run(s)
    data = json.loads(path.read_text())
    assert data["min_delay"] == 2.0 and data["sites"] == ["a"]
    assert data["headers"] == published(r)
    assert data["headers_previous"] == published(r, KEY + PREVIOUS_SUFFIX)
    assert data["_remediation_headers"]["version"] == 2
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_broken_or_oversized_json_file_is_left_alone_and_fails_the_action(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """Invalid JSON, or a file over MAX_FILE_BYTES, is not touched; the result says why."""
    path = tmp_path / "scraping_config.json"
    s = settings_env(REMEDIATION_HEADERS__JSON_FILE=str(path))
    for content in ("{not json", json.dumps({"pad": "x" * (1 << 20)})):
        path.write_text(content)
        done = run(s)
        assert not done.ok and "JSON file not written" in done.summary
        assert path.read_text() == content


def test_a_key_of_another_type_fails_clearly(settings_env: Any, r: redis.Redis) -> None:
    """A string where the hash should be is reported, not overwritten."""
    s = settings_env()
    r.set(KEY, "Mozilla/5.0")
    with pytest.raises(ActionFailed, match="is a Redis string, not the hash"):
        run(s)
    assert r.get(KEY) == b"Mozilla/5.0"


# --- resolve: hostile kwargs ----------------------------------------------------------------


def test_resolve_refuses_what_configuration_does_not_allow(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer
) -> None:
    """Another Redis, a browser or OS outside the configured ones, or the action switched
    off: refused before any guard. A case variant of the target is the configured name."""
    s = settings_env(
        REMEDIATION_REDIS_TARGETS=json.dumps(
            {"Scrape": redis_server.url(0), "other": redis_server.url(3)}
        ),
        REMEDIATION_HEADERS__REDIS_TARGET="Scrape",
        REMEDIATION_HEADERS__BROWSERS='["chrome", "firefox"]',
    )
    resolve = get_action("regenerate_headers").resolve
    ctx = CheckContext(s, get_logger())
    assert resolve(ctx, RegenerateHeadersParams(target="sCRAPE")).params.target == "Scrape"
    for kwargs, why in (
        ({"target": "other"}, "lives on Redis target 'Scrape', not 'other'"),
        ({"target": "nowhere"}, "not configured"),
        ({"target": "Scrape", "browser": "safari"}, "'safari' is not in"),
        ({"target": "Scrape", "os": "android"}, "'android' is not in"),
    ):
        with pytest.raises(Refused, match=why):
            resolve(ctx, RegenerateHeadersParams(**kwargs))
    off = settings_env(REMEDIATION_HEADERS__ENABLED="false")
    with pytest.raises(Refused, match="REMEDIATION_HEADERS__ENABLED") as refused:
        resolve(CheckContext(off, get_logger()), RegenerateHeadersParams())
    assert refused.value.notice is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"browser": "opera"},
        {"os": "windows; rm -rf /"},
        {"headers": {"User-Agent": "x"}},
        {"json_file": "/etc/passwd"},
        {"key": "other"},
    ],
)
def test_kwargs_outside_the_model_are_rejected(kwargs: dict[str, Any]) -> None:
    """Unknown browsers and OSes fail validation; headers, paths and keys are not kwargs."""
    with pytest.raises(ValidationError):
        RegenerateHeadersParams(**kwargs)


def test_through_the_runner_refusals_cost_nothing_and_the_cooldown_holds(
    settings_env: Any, r: redis.Redis
) -> None:
    """A refused call publishes nothing; of two good calls the second is held by the
    10-minute cooldown, so one set is published."""
    s = settings_env()
    runner = Runner(s, Recorder())
    outcomes = [
        runner.run_action("regenerate_headers", kwargs)
        for kwargs in ({"target": "self", "os": "ios"}, {"target": "SELF"}, {"target": "self"})
    ]
    assert [o.outcome for o in outcomes] == ["refused", "succeeded", "suppressed"]
    assert r.hget(KEY, "version") == b"1"
