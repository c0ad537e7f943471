"""What every part of the demo shares: its constants (database names, Redis roles and keys, the
miniature's size, the time bounds), the error that stops it before anything is done, `say`, and
small helpers for URLs, connections, ports and the Redis databases it owns."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
APP_DB = "remediation_demo"
AUDIT_DB = "remediation_demo_audit"
DB_MARK = "made by `make demo`: dropped and made again by the next one"
"""The comment on the demo's databases: one without it is not the demo's to drop."""
REDIS_DB_BASE = 10
REDIS_ROLES = ("state", "broker", "result", "app")
"""The Redis databases the demo uses, from --redis-db-base on, in this order."""
LOCK_ID = 0x6465_6D6F  # "demo"
"""The advisory lock one running demo holds."""
OWNER_KEY = "remediation-demo:owner"
"""Marks a Redis database as the demo's (written at start, deleted at the end)."""
JOBS_KEY = "demo:jobs"
CACHE_PATTERN = "demo:cache:*"
CACHE_MAXMEMORY = "32mb"
"""The private cache Redis's maxmemory (the shared one's configuration is never changed)."""
ACTIVE_KEY = "demo:proxies:active"
CONFIG_KEY = "demo:scraping:config"
HEADERS_KEY = "demo:scraping:headers"
URLS = 10
"""Monitored product pages (one job each in the job list)."""
PROXIES = 3
MIN_DELAY = 0.25
"""The scraper's pause between requests before any ban (scraping_config.json min_delay)."""
ROWS = 20_000
"""price_history rows before the bloat."""
START_TIMEOUT = 90.0
IO_TIMEOUT = 10
"""Seconds for one database or Redis round trip of the demo itself."""


class DemoError(Exception):
    """The demo cannot start (its message says why and what to do)."""


def say(text: str) -> None:
    print(text, flush=True)


def redis_url(base: str, db: int) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("redis", "rediss"):
        raise DemoError("REMEDIATION_STATE_REDIS_URL must be a redis:// URL for the demo")
    return urlunsplit(parts._replace(path=f"/{db}"))


def pg_url(base: str, dbname: str) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("postgresql", "postgres"):
        raise DemoError("REMEDIATION_AUDIT_DSN must be a postgresql:// URL for the demo")
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=IO_TIMEOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unlink_all(r: redis.Redis) -> None:
    """Delete every key of a database the demo owns, in batches (never FLUSHDB)."""
    batch: list[bytes] = []
    for key in r.scan_iter(count=500):
        batch.append(key)
        if len(batch) >= 500:
            r.unlink(*batch)
            batch = []
    if batch:
        r.unlink(*batch)


def elapsed(started: float) -> float:
    return round(time.monotonic() - started, 1)
