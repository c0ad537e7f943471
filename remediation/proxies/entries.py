"""Configured proxies: ``URL [REGION]`` entries from PROXY_LIST and the proxies file.

A proxy's id and how logs show it come from its URL without the password.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from remediation.settings import ProxySettings

MAX_ENTRIES = 5000
"""Configured proxies beyond this are ignored (and reported)."""
MAX_FILE_BYTES = 4 * 1024 * 1024
"""A proxies file larger than this is not read."""

SCHEMES = ("http", "https")
_REGION = re.compile(r"^[A-Za-z0-9_\-]{1,32}$")
_COMMENT = re.compile(r"(^|\s)#.*$")


def proxy_id(url: str) -> str:
    """Stable id of a proxy: sha1 of scheme://user@host:port, first 12 hex (no password)."""
    parts = urllib.parse.urlsplit(url)
    identity = f"{parts.scheme.lower()}://{parts.username or ''}@{_host(parts)}:{parts.port}"
    return hashlib.sha1(identity.encode(), usedforsecurity=False).hexdigest()[:12]


def display_url(url: str) -> str:
    """scheme://host:port: what logs, findings and results show (no user, no password)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme.lower()}://{_host(parts)}{port}"


def _host(parts: urllib.parse.SplitResult) -> str:
    host = (parts.hostname or "").lower()
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class ProxyEntry:
    """One configured proxy: its URL (credentials included) and region ('' when none)."""

    url: str
    region: str = ""

    @property
    def id(self) -> str:
        return proxy_id(self.url)


def parse_entry(text: str) -> ProxyEntry:
    """``URL [REGION]`` -> ProxyEntry; ValueError says what is wrong, never echoing the URL."""
    fields = text.split()
    if len(fields) not in (1, 2):
        raise ValueError(f"expected 'URL [REGION]', got {len(fields)} fields")
    raw = fields[0].rstrip("/")
    if "://" not in raw:
        raise ValueError("missing scheme: expected http://host:port or https://host:port")
    parts = urllib.parse.urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme.startswith("socks"):
        raise ValueError(f"{scheme}:// is not supported (no SOCKS support installed); use http(s)")
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme {scheme!r}: use http:// or https://")
    if not parts.hostname:
        raise ValueError("missing host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("port must be a number from 1 to 65535") from None
    if port is None:
        raise ValueError("missing port")
    if port == 0:
        raise ValueError("port must be a number from 1 to 65535")
    if parts.path or parts.query or parts.fragment:
        raise ValueError("a proxy URL has no path, query or fragment")
    region = fields[1] if len(fields) == 2 else ""
    if region and not _REGION.match(region):
        raise ValueError("region must be 1-32 letters, digits, '_' or '-'")
    return ProxyEntry(raw, region.lower())


@dataclass
class Loaded:
    """What the configuration yielded. ``complete`` is False when a source could not be
    read whole: proxies missing from it are then not removed from the pool."""

    entries: list[ProxyEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    complete: bool = True


def load_entries(cfg: ProxySettings) -> Loaded:
    """Parse PROXY_LIST items and the proxies file; bad entries are reported, not fatal."""
    loaded = Loaded()
    sources = [(f"PROXY_LIST item {i}", text) for i, text in enumerate(cfg.proxy_list, 1)]
    if cfg.file:
        sources += _file_lines(cfg.file, loaded)
    seen: dict[str, str] = {}
    for where, text in sources:
        text = _COMMENT.sub("", text).strip()
        if not text:
            continue
        try:
            entry = parse_entry(text)
        except ValueError as exc:
            loaded.errors.append(f"{where}: {exc}")
            continue
        if entry.id in seen:
            loaded.errors.append(f"{where}: duplicate of {seen[entry.id]}")
            continue
        if len(loaded.entries) >= MAX_ENTRIES:
            loaded.errors.append(f"{where}: more than {MAX_ENTRIES} proxies; the rest ignored")
            loaded.complete = False
            break
        seen[entry.id] = where
        loaded.entries.append(entry)
    return loaded


def _file_lines(path: str, loaded: Loaded) -> list[tuple[str, str]]:
    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        loaded.errors.append(f"proxies file {path}: cannot read ({reason[:120]})")
        loaded.complete = False
        return []
    return [(f"proxies file line {n}", line) for n, line in enumerate(text.splitlines(), 1)]
