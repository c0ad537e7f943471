"""Runbook 002 "Redis/Cache Issues": connectivity, latency, memory, evictions, hit rate.

INFO counters (evicted_keys, keyspace_hits, keyspace_misses) are cumulative since the
server started. With the audit store at hand each run records them (audit table
observations) and judges what happened since the previous run; without a store, or on
the first run, or after a restart reset them, the cumulative values are judged.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import redis

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.redact import MASK, redact_text
from remediation.registry import check
from remediation.settings import CacheSettings

CHECK = "redis_cache"


class RedisCacheParams(CheckParams):
    """Thresholds come from REMEDIATION_CACHE__*; only the target is chosen per call."""


def safe_redis_error(exc: BaseException, url: str) -> str:
    """The error text without the URL's password, whatever form the client echoed it in."""
    text = redact_text(" ".join(f"{type(exc).__name__}: {exc}".split()))
    password = urlsplit(url).password
    if password:
        text = text.replace(password, MASK)
    return text[:500]


def _where(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return {"host": parts.hostname, "port": port, "db": parts.path.lstrip("/") or "0"}


def _finding(params: RedisCacheParams, kind: str, severity: Severity, **kw: Any) -> Finding:
    return Finding(check=CHECK, target=params.target, kind=kind, severity=severity, **kw)


def _unreachable(params: RedisCacheParams, url: str, exc: BaseException) -> Finding:
    error, where = safe_redis_error(exc, url), _where(url)
    return _finding(
        params,
        "redis_unreachable",
        Severity.HIGH,
        evidence={**where, "error": error},
        summary=(
            f"cannot reach Redis {params.target!r}"
            f" ({where['host']}:{where['port']}/{where['db']}): {error}"
        ),
    )


def _maxmemory(r: redis.Redis, memory: dict[str, Any]) -> int | None:
    """maxmemory in bytes (0 = unlimited); INFO first, CONFIG GET where INFO lacks it."""
    if "maxmemory" in memory:
        return int(memory["maxmemory"])
    try:
        value = r.config_get("maxmemory").get("maxmemory")
    except redis.ResponseError:  # CONFIG renamed or disabled (managed Redis)
        return None
    return int(value) if value is not None else None


def _probe(r: redis.Redis) -> tuple[float, dict[str, Any], dict[str, Any], int | None]:
    r.ping()  # connects if needed; the timed round trip below is the cache's own latency
    started = time.perf_counter()
    r.ping()
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    memory, stats = r.info("memory"), r.info("stats")
    return latency_ms, memory, stats, _maxmemory(r, memory)


def since_last(ctx: CheckContext, target: str, metric: str, value: int) -> tuple[int, str]:
    """(count, basis) of a cumulative counter: growth since the previous run when the
    store knows one, otherwise the counter itself (no store, first run, or reset)."""
    if ctx.store is None:
        return value, "cumulative"
    previous = ctx.store.last_observation(CHECK, target, metric)
    ctx.store.record_observation(CHECK, target, metric, value)
    if previous is None:
        return value, "cumulative"
    if previous[0] > value:  # restart or CONFIG RESETSTAT
        return value, "since_reset"
    return value - int(previous[0]), "since_previous_run"


def _latency(params: RedisCacheParams, cfg: CacheSettings, latency_ms: float) -> list[Finding]:
    if latency_ms <= cfg.latency_warning_ms:
        return []
    return [
        _finding(
            params,
            "redis_latency_high",
            Severity.WARNING,
            observed=latency_ms,
            threshold=cfg.latency_warning_ms,
            evidence={"ping_ms": latency_ms},
            summary=f"PING took {latency_ms} ms (slow cache: runbook 002 medium)",
        )
    ]


def _memory(
    params: RedisCacheParams, cfg: CacheSettings, memory: dict[str, Any], maxmemory: int | None
) -> list[Finding]:
    if not maxmemory:  # 0 = unlimited, None = unknown: there is no ratio to judge
        return []
    used = int(memory.get("used_memory", 0))
    ratio = used / maxmemory
    if ratio < cfg.memory_warning_ratio:
        return []
    high = ratio >= cfg.memory_high_ratio
    limit = cfg.memory_high_ratio if high else cfg.memory_warning_ratio
    evidence = {
        "used_memory": used,
        "maxmemory": maxmemory,
        "maxmemory_policy": memory.get("maxmemory_policy"),
        "used_memory_rss": memory.get("used_memory_rss"),
    }
    return [
        _finding(
            params,
            "redis_memory_high",
            Severity.HIGH if high else Severity.WARNING,
            observed=round(ratio, 4),
            threshold=limit,
            evidence=evidence,
            summary=f"Redis uses {ratio:.0%} of maxmemory ({used} of {maxmemory} bytes)",
        )
    ]


def _evictions(ctx: CheckContext, params: RedisCacheParams, stats: dict[str, Any]) -> list[Finding]:
    evicted, basis = since_last(
        ctx, params.target, "evicted_keys", int(stats.get("evicted_keys", 0))
    )
    if evicted <= 0:
        return []
    return [
        _finding(
            params,
            "redis_evictions",
            Severity.WARNING,
            observed=evicted,
            threshold=0,
            evidence={"evicted_keys": int(stats.get("evicted_keys", 0)), "basis": basis},
            summary=f"{evicted} key(s) evicted ({basis.replace('_', ' ')})",
        )
    ]


def _miss_ratio(
    ctx: CheckContext, params: RedisCacheParams, cfg: CacheSettings, stats: dict[str, Any]
) -> list[Finding]:
    hits, basis = since_last(
        ctx, params.target, "keyspace_hits", int(stats.get("keyspace_hits", 0))
    )
    misses, _ = since_last(
        ctx, params.target, "keyspace_misses", int(stats.get("keyspace_misses", 0))
    )
    lookups = hits + misses
    if lookups < cfg.min_lookups:
        return []
    ratio = misses / lookups
    if ratio <= cfg.miss_ratio_high:
        return []
    return [
        _finding(
            params,
            "redis_cache_miss_high",
            Severity.HIGH,
            observed=round(ratio, 4),
            threshold=cfg.miss_ratio_high,
            evidence={"hits": hits, "misses": misses, "basis": basis},
            summary=(
                f"{ratio:.0%} of {lookups} lookups missed ({basis.replace('_', ' ')};"
                " runbook 002: cache misses > 50 % is high)"
            ),
        )
    ]


@check("redis_cache")
def redis_cache(ctx: CheckContext, params: RedisCacheParams) -> list[Finding]:
    """Redis as a cache (runbook 002 "Redis/Cache Issues"): reachable, fast, room, hit rate.

    A Redis that does not answer is redis_unreachable (high); the password never appears.
    PING slower than LATENCY_WARNING_MS is redis_latency_high (warning, "slow cache").
    used_memory against maxmemory at MEMORY_WARNING_RATIO / MEMORY_HIGH_RATIO is
    redis_memory_high (maxmemory 0, unlimited, is not judged). Keys evicted since the
    previous run are redis_evictions (warning). misses / (hits + misses) above
    MISS_RATIO_HIGH over at least MIN_LOOKUPS lookups is redis_cache_miss_high (high).
    All settings are REMEDIATION_CACHE__*."""
    cfg = ctx.settings.cache
    url = ctx.settings.redis_url(params.target)
    try:
        latency_ms, memory, stats, maxmemory = _probe(ctx.redis(params.target))
    except redis.RedisError as exc:
        return [_unreachable(params, url, exc)]
    return [
        *_latency(params, cfg, latency_ms),
        *_memory(params, cfg, memory, maxmemory),
        *_evictions(ctx, params, stats),
        *_miss_ratio(ctx, params, cfg, stats),
    ]
