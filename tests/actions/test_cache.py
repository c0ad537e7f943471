"""flush_cache against a real redis-server: only configured patterns, capped, never FLUSHALL."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from remediation.actions.cache import FlushCacheParams, flush_cache
from remediation.context import ActionContext
from remediation.findings import ActionResult
from remediation.logging import get_logger


def flush(settings: Any, **params: Any) -> ActionResult:
    return flush_cache(ActionContext(settings, get_logger()), FlushCacheParams(**params))


def fill(r: redis.Redis, prefix: str, n: int) -> None:
    """n keys prefix:0 .. prefix:n-1, created in pipelined MSETs of 10,000."""
    pipe = r.pipeline(transaction=False)
    for start in range(0, n, 10_000):
        pipe.mset({f"{prefix}:{i}": "v" for i in range(start, min(n, start + 10_000))})
    pipe.execute()


def count(r: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in r.scan_iter(match=pattern, count=10_000))


def patterns(*values: str) -> str:
    return json.dumps(list(values))


def test_deletes_exactly_the_matching_keys_of_100k(settings_env: Any, r: redis.Redis) -> None:
    """Of 50,000 cache:* and 50,000 keep:* keys, all cache keys go and every keep key stays."""
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*"),
                     REMEDIATION_CACHE__FLUSH_MAX_KEYS_PER_RUN="100000")  # fmt: skip
    fill(r, "cache", 50_000)
    fill(r, "keep", 50_000)
    result = flush(s)
    assert (result.ok, result.detail["deleted"], result.detail["capped"]) == (
        True, {"cache:*": 50_000}, False,
    )  # fmt: skip
    assert count(r, "cache:*") == 0
    assert r.dbsize() == 50_000 == count(r, "keep:*")
    r.unlink(*r.scan_iter(match="keep:*", count=10_000))  # the r fixture deletes one by one


def test_cap_leaves_the_rest_for_the_next_run(settings_env: Any, r: redis.Redis) -> None:
    """A run deletes at most FLUSH_MAX_KEYS_PER_RUN keys and reports how many are left."""
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*"),
                     REMEDIATION_CACHE__FLUSH_MAX_KEYS_PER_RUN="300",
                     REMEDIATION_CACHE__FLUSH_BATCH="100")  # fmt: skip
    fill(r, "cache", 1000)
    result = flush(s)
    assert {k: result.detail[k] for k in ("deleted", "capped", "left")} == {
        "deleted": {"cache:*": 300}, "capped": True, "left": 700,
    }  # fmt: skip
    assert count(r, "cache:*") == 700
    assert flush(s).detail["deleted"] == {"cache:*": 300}
    assert count(r, "cache:*") == 400


def test_unconfigured_pattern_is_refused(settings_env: Any, r: redis.Redis) -> None:
    """A call cannot widen the allow-list: a pattern not in FLUSH_PATTERNS deletes nothing."""
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*"))
    fill(r, "keep", 10)
    result = flush(s, patterns=["keep:*"])
    assert not result.ok and "REMEDIATION_CACHE__FLUSH_PATTERNS" in result.summary
    assert count(r, "keep:*") == 10


def test_empty_configuration_is_refused(settings_env: Any, r: redis.Redis) -> None:
    """With no FLUSH_PATTERNS configured nothing is deleted and the summary names the variable."""
    fill(r, "cache", 10)
    result = flush(settings_env())
    assert not result.ok and "FLUSH_PATTERNS is empty" in result.summary
    assert count(r, "cache:*") == 10


@pytest.mark.parametrize("pattern", ["*", "", "**", "[a-z]*"])
def test_whole_keyspace_patterns_are_refused(
    settings_env: Any, r: redis.Redis, pattern: str
) -> None:
    """A pattern matching every key is rejected as a call argument and refused even when configured."""
    with pytest.raises(ValidationError):
        FlushCacheParams(patterns=[pattern])
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*", pattern))
    fill(r, "cache", 10)
    result = flush(s)
    assert not result.ok and "matches every key" in result.summary
    assert count(r, "cache:*") == 10


def test_guard_keys_are_never_deleted(settings_env: Any, r: redis.Redis) -> None:
    """Keys of the guards (rem:*) survive a pattern that matches them."""
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("re*"))
    r.set("rem:cooldown:flush_cache:self", "1")
    r.set("report:1", "1")
    result = flush(s)
    assert (result.detail["deleted"], result.detail["protected"]) == ({"re*": 1}, 1)
    assert r.exists("rem:cooldown:flush_cache:self") and not r.exists("report:1")
