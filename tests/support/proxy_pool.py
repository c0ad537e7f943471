"""The proxy pool under test: settings pointing at an origin, one check or rotation, and the
pool state in Redis."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from remediation.actions.proxies import RotateProxiesParams, rotate_proxies
from remediation.checks.proxies import ProxyPoolParams, proxy_pool_health
from remediation.context import ActionContext, CheckContext
from remediation.findings import ActionResult, Finding
from remediation.logging import get_logger
from remediation.proxies import proxy_id
from remediation.settings import Settings
from tests.support.http_doubles import Origin

ACTIVE_KEY = "proxies:active"


def pool_settings(settings_env: Any, entries: list[str], origin: Origin, **extra: str) -> Settings:
    """Settings whose pool is entries, tested through origin with short timeouts."""
    env = {
        "REMEDIATION_PROXIES__PROXY_LIST": json.dumps(entries),
        "REMEDIATION_PROXIES__TEST_URL": origin.url,
        "REMEDIATION_PROXIES__TIMEOUT_SECONDS": "1",
        "REMEDIATION_PROXIES__SLOW_MS": "300",
        "REMEDIATION_PROXIES__MIN_ACTIVE": "1",
        **extra,
    }
    settings: Settings = settings_env(**env)
    return settings


def run_check(s: Settings) -> list[Finding]:
    return proxy_pool_health(CheckContext(s, get_logger()), ProxyPoolParams())


def rotate(s: Settings) -> ActionResult:
    return rotate_proxies(ActionContext(s, get_logger()), RotateProxiesParams())


def kinds(findings: list[Finding]) -> dict[str, Finding]:
    return {f.kind if f.kind != "proxy_region_low" else f"region:{f.subject}": f for f in findings}


def record(r: redis.Redis, url: str) -> dict[str, str]:
    raw = r.hgetall(f"rem:proxy:p:{proxy_id(url)}")
    return {k.decode(): v.decode() for k, v in raw.items()}


def published(r: redis.Redis) -> set[str]:
    return {m.decode() for m in r.smembers(ACTIVE_KEY)}


def expire_quarantine(r: redis.Redis, url: str) -> None:
    """Time travel: the proxy's back-off is over now."""
    r.hset(f"rem:proxy:p:{proxy_id(url)}", "quarantine_until", str(time.time() - 1))
