"""redis_cache against a real redis-server: reachability, latency, memory, evictions, hit rate."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from remediation.audit.store import AuditStore
from remediation.checks.cache import RedisCacheParams, redis_cache
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import get_logger
from tests.support.base import free_port
from tests.support.services import RedisServer


def run(settings: Any, store: Any = None, target: str = "self") -> dict[str, Finding]:
    findings = redis_cache(
        CheckContext(settings, get_logger(), store), RedisCacheParams(target=target)
    )
    return {f.kind: f for f in findings}


def lookups(r: redis.Redis, hits: int, misses: int) -> None:
    """Drive keyspace_hits / keyspace_misses with real GETs."""
    r.set("cache:hit", "1")
    pipe = r.pipeline(transaction=False)
    for _ in range(hits):
        pipe.get("cache:hit")
    for i in range(misses):
        pipe.get(f"cache:missing:{i}")
    pipe.execute()


@pytest.fixture
def fresh(r: redis.Redis) -> Iterator[redis.Redis]:
    """The private server with its INFO counters reset and no memory limit afterwards."""
    r.config_resetstat()
    yield r
    r.config_set("maxmemory", 0)
    r.config_set("maxmemory-policy", "noeviction")


def own_target(settings_env: Any, redis_server: RedisServer, **env: str) -> tuple[Any, str]:
    """Settings with a target of its own, so observations of other tests do not count."""
    name = f"cache_{uuid.uuid4().hex[:8]}"
    env[f"REMEDIATION_REDIS_TARGETS__{name.upper()}"] = redis_server.url(0)
    return settings_env(**env), name


def test_closed_port_is_unreachable_without_password(settings_env: Any) -> None:
    """A Redis that does not answer is a high redis_unreachable finding whose text hides the password."""
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    s = settings_env(REMEDIATION_REDIS_TARGETS__DOWN=url)
    found = run(s, target="down")
    assert list(found) == ["redis_unreachable"]
    assert found["redis_unreachable"].severity.value == "high"
    assert "s3cret-pw" not in found["redis_unreachable"].model_dump_json()


def test_healthy_cache_has_no_findings(settings_env: Any, fresh: redis.Redis) -> None:
    """A fast Redis without maxmemory, evictions or misses reports nothing."""
    lookups(fresh, hits=2000, misses=0)
    assert run(settings_env()) == {}


def test_slow_ping_is_a_warning(settings_env: Any, fresh: redis.Redis) -> None:
    """A PING slower than LATENCY_WARNING_MS is redis_latency_high (runbook 002 slow cache: medium)."""
    found = run(settings_env(REMEDIATION_CACHE__LATENCY_WARNING_MS="0.000001"))
    assert found["redis_latency_high"].severity.value == "warning"


def test_memory_ratio_bands(settings_env: Any, fresh: redis.Redis) -> None:
    """used_memory over maxmemory is a warning past 0.8 and high past 0.9; maxmemory 0 is not judged."""
    s = settings_env()
    run(s)  # the check's own connection counts as used memory too
    used = int(fresh.info("memory")["used_memory"])
    fresh.config_set("maxmemory", int(used / 0.85))
    assert run(s)["redis_memory_high"].severity.value == "warning"
    fresh.config_set("maxmemory", int(used / 0.97))
    assert run(s)["redis_memory_high"].severity.value == "high"
    fresh.config_set("maxmemory", 0)
    assert "redis_memory_high" not in run(s)


def test_evictions_are_reported_once_per_growth(
    settings_env: Any, redis_server: RedisServer, fresh: redis.Redis
) -> None:
    """Evicted keys count cumulatively without a store and only as growth since the previous run with one."""
    s, target = own_target(settings_env, redis_server)
    fresh.config_set("maxmemory-policy", "allkeys-lru")
    fresh.config_set("maxmemory", int(fresh.info("memory")["used_memory"]) + 256 * 1024)
    pipe = fresh.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"cache:big:{i}", b"x" * 1024)
    pipe.execute()
    fresh.config_set("maxmemory", 0)  # no more evictions: the counter stands still
    evicted = int(fresh.info("stats")["evicted_keys"])
    assert evicted > 0
    assert run(s, target=target)["redis_evictions"].observed == evicted
    store = AuditStore(s.audit_dsn.get_secret_value())
    assert run(s, store, target)["redis_evictions"].evidence["basis"] == "cumulative"
    assert "redis_evictions" not in run(s, store, target)  # nothing evicted since


def test_miss_ratio_needs_enough_lookups(settings_env: Any, fresh: redis.Redis) -> None:
    """More than half of at least MIN_LOOKUPS lookups missing is redis_cache_miss_high (high)."""
    s = settings_env(REMEDIATION_CACHE__MIN_LOOKUPS="100")
    lookups(fresh, hits=30, misses=60)
    assert run(s) == {}  # 90 lookups: too few to judge
    lookups(fresh, hits=0, misses=20)
    found = run(s)["redis_cache_miss_high"]
    assert (found.severity.value, found.observed, found.evidence["basis"]) == (
        "high",
        round(80 / 110, 4),
        "cumulative",
    )


def test_miss_ratio_uses_deltas_with_a_store(
    settings_env: Any, redis_server: RedisServer, fresh: redis.Redis
) -> None:
    """With a store the ratio covers lookups since the previous run, not since the server started."""
    s, target = own_target(settings_env, redis_server, REMEDIATION_CACHE__MIN_LOOKUPS="100")
    store = AuditStore(s.audit_dsn.get_secret_value())
    lookups(fresh, hits=1000, misses=0)
    assert run(s, store, target) == {}
    lookups(fresh, hits=0, misses=200)
    assert run(s, None, target) == {}  # cumulative: 200 of 1200 missed
    found = run(s, store, target)["redis_cache_miss_high"]
    assert (found.observed, found.evidence) == (
        1.0,
        {"hits": 0, "misses": 200, "basis": "since_previous_run"},
    )
