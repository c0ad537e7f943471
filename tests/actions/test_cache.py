"""flush_cache against a real redis-server: only configured patterns, capped, never FLUSHALL."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from remediation.actions.cache import (
    FlushCacheParams,
    flush_cache,
    matches_everything,
    plan_flush,
    resolve_patterns,
)
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.runner import Runner
from tests.support.runner import Recorder
from tests.support.services import RedisServer


def flush(settings: Any, **params: Any) -> ActionResult:
    return flush_cache(ActionContext(settings, get_logger()), FlushCacheParams(**params))


def fill(r: redis.Redis, prefix: str, n: int) -> None:
    """n keys prefix:0 .. prefix:n-1, created in pipelined MSETs of 10,000."""
    pipe = r.pipeline(transaction=False)
    for start in range(0, n, 10_000):
        pipe.mset({f"{prefix}:{i}": "v" for i in range(start, min(n, start + 10_000))})
    pipe.execute()


def count(r: redis.Redis, pattern: str) -> int:
    return len(set(r.scan_iter(match=pattern, count=10_000)))  # SCAN may repeat a key


def patterns(*values: str) -> str:
    return json.dumps(list(values))


def test_deletes_exactly_the_matching_keys_of_100k(settings_env: Any, r: redis.Redis) -> None:
    """Of 50,000 cache:* and 50,000 keep:* keys, all cache keys go and every keep key stays."""
    s = settings_env(
        REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*"),
        REMEDIATION_CACHE__FLUSH_MAX_KEYS_PER_RUN="100000",
    )
    fill(r, "cache", 50_000)
    fill(r, "keep", 50_000)
    result = flush(s)
    assert (result.ok, result.detail["deleted"], result.detail["capped"]) == (
        True,
        {"cache:*": 50_000},
        False,
    )
    assert count(r, "cache:*") == 0
    assert r.dbsize() == 50_000 == count(r, "keep:*")
    r.unlink(*r.scan_iter(match="keep:*", count=10_000))  # the r fixture deletes one by one


def test_cap_leaves_the_rest_for_the_next_run(settings_env: Any, r: redis.Redis) -> None:
    """A run deletes at most FLUSH_MAX_KEYS_PER_RUN keys and reports how many are left."""
    s = settings_env(
        REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*"),
        REMEDIATION_CACHE__FLUSH_MAX_KEYS_PER_RUN="300",
        REMEDIATION_CACHE__FLUSH_BATCH="100",
    )
    fill(r, "cache", 1000)
    result = flush(s)
    assert {k: result.detail[k] for k in ("deleted", "capped", "left")} == {
        "deleted": {"cache:*": 300},
        "capped": True,
        "left": 700,
    }
    assert count(r, "cache:*") == 700
    assert flush(s).detail["deleted"] == {"cache:*": 300}
    assert count(r, "cache:*") == 400


def test_unconfigured_pattern_is_refused_before_any_guard(
    settings_env: Any, r: redis.Redis
) -> None:
    """A call cannot widen the allow-list: a pattern not in FLUSH_PATTERNS is refused by the
    resolve step (audited, no budget spent, no failure page) and deletes nothing."""
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*"))
    fill(r, "keep", 10)
    sent = Recorder()
    out = Runner(s, sent).run_action("flush_cache", {"patterns": ["keep:*"]}, task_id="fc-1")
    assert out.outcome == "refused" and "REMEDIATION_CACHE__FLUSH_PATTERNS" in out.reason
    assert count(r, "keep:*") == 10
    assert r.zcard(keys.budget("flush_cache")) == 0
    assert [k["kind"] for _, k, _ in sent.sent] == ["action_refused"]
    with pytest.raises(Refused, match="not in REMEDIATION_CACHE__FLUSH_PATTERNS"):
        flush(s, patterns=["keep:*"])  # the action itself holds to it when called directly
    assert count(r, "keep:*") == 10


def test_empty_configuration_is_refused(settings_env: Any, r: redis.Redis) -> None:
    """With no FLUSH_PATTERNS configured nothing is deleted and the refusal names the variable."""
    fill(r, "cache", 10)
    out = Runner(settings_env(), Recorder()).run_action("flush_cache", {}, task_id="fc-2")
    assert out.outcome == "refused" and "FLUSH_PATTERNS is empty" in out.reason
    assert count(r, "cache:*") == 10


def test_canonical_patterns_and_target_are_what_the_guards_see(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer
) -> None:
    """Patterns run once each in configured order; a case variant of the target is the
    configured name, so it shares the cooldown of the first call and deletes nothing more."""
    s = settings_env(
        REMEDIATION_REDIS_TARGETS=json.dumps({"Cache": redis_server.url(0)}),
        REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("a:*", "b:*", "c:*", "a:*"),
    )
    ctx = CheckContext(s, get_logger())
    named = resolve_patterns(ctx, FlushCacheParams(target="CACHE", patterns=["c:*", "a:*", "c:*"]))
    assert (named.params.target, named.params.patterns) == ("Cache", ["a:*", "c:*"])
    every = resolve_patterns(ctx, FlushCacheParams(target="cache")).params.patterns
    assert every == ["a:*", "b:*", "c:*"]
    fill(r, "a", 5)
    runner = Runner(s, Recorder())
    first = runner.run_action("flush_cache", {"target": "cache"}, task_id="fc-3")
    fill(r, "a", 5)
    second = runner.run_action("flush_cache", {"target": "CACHE"}, task_id="fc-4")
    assert (first.outcome, second.outcome) == ("succeeded", "suppressed")
    assert second.reason.startswith("cooling down") and count(r, "a:*") == 5
    assert r.exists(keys.cooldown("flush_cache", "Cache"))


@pytest.mark.parametrize("pattern", ["*", "", "**", "[a-z]*"])
def test_whole_keyspace_patterns_are_refused(
    settings_env: Any, r: redis.Redis, pattern: str
) -> None:
    """A pattern matching every key is rejected as a call argument and refused even when configured."""
    with pytest.raises(ValidationError):
        FlushCacheParams(patterns=[pattern])
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*", pattern))
    fill(r, "cache", 10)
    out = Runner(s, Recorder()).run_action("flush_cache", {}, task_id=f"all-{pattern}")
    assert out.outcome == "refused" and "matches every key" in out.reason
    assert count(r, "cache:*") == 10


def test_guard_keys_are_never_deleted(settings_env: Any, r: redis.Redis) -> None:
    """Keys of the guards (rem:*) survive a pattern that matches them."""
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("re*"))
    r.set("rem:cooldown:flush_cache:self", "1")
    r.set("report:1", "1")
    result = flush(s)
    assert (result.detail["deleted"], result.detail["protected"]) == ({"re*": 1}, 1)
    assert r.exists("rem:cooldown:flush_cache:self") and not r.exists("report:1")


_OLD_GLOB = re.compile(r"\[[^\]]*\]|\\.|[*?]")  # the former (quadratic) definition


def test_matches_everything_agrees_with_the_former_regex() -> None:
    """On 20,000 random short patterns over the glob's special characters the linear scan
    gives the former regex's answer (a pattern is the whole keyspace iff nothing literal
    is left once bracket sets, escapes and wildcards are taken out)."""
    rng = random.Random(7)
    alphabet = "[]\\*?a^-\n"
    for _ in range(20_000):
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert matches_everything(pattern) == (not _OLD_GLOB.sub("", pattern)), pattern


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "hostile", ["[" * 1_000_000, "[a" * 500_000, "\\" * 1_000_000, "[*" * 500_000 + "x"]
)
def test_matches_everything_is_linear_on_hostile_patterns(hostile: str) -> None:
    """1 MB of '[' (which kept the former regex retrying to the end from every '[') is
    answered in one pass; the quadratic form would not finish within the test's limit."""
    assert matches_everything(hostile) is (hostile == "\\" * 1_000_000)


def test_flush_plan_counts_keys_per_pattern_and_deletes_nothing(
    settings_env: Any, r: redis.Redis
) -> None:
    """The plan counts each pattern's keys (cut at the per-run cap: "more match"), leaves
    out a pattern with nothing to delete, and every key is still there."""
    s = settings_env(
        REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*", "sess:*", "none:*"),
        REMEDIATION_CACHE__FLUSH_MAX_KEYS_PER_RUN="100",
        REMEDIATION_CACHE__FLUSH_BATCH="7",
    )
    fill(r, "cache", 30)
    fill(r, "sess", 5)
    fill(r, "keep", 10)
    plan = plan_flush(CheckContext(s, get_logger()), FlushCacheParams())
    assert {i.key: i.detail["keys"] for i in plan.items} == {
        "pattern:cache:*": 30,
        "pattern:sess:*": 5,
    }
    assert not any(i.detail["more_match"] for i in plan.items)
    s = settings_env(REMEDIATION_CACHE__FLUSH_MAX_KEYS_PER_RUN="20")
    plan = plan_flush(CheckContext(s, get_logger()), FlushCacheParams())
    assert [(i.key, i.detail["keys"], i.detail["more_match"]) for i in plan.items] == [
        ("pattern:cache:*", 20, True)
    ]  # the run would stop at its cap: sess:* would not be reached
    assert r.dbsize() == 45


def test_an_approval_flushes_only_approved_patterns(settings_env: Any, r: redis.Redis) -> None:
    """Only the approved pattern's keys go, up to its count; a pattern not approved and
    one configured after the approval are left whole."""
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*", "sess:*"))
    fill(r, "cache", 30)
    fill(r, "sess", 5)
    plan = plan_flush(CheckContext(s, get_logger()), FlushCacheParams())
    approved = frozenset({"pattern:cache:*"}) & plan.keys()
    fill(r, "new", 4)
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*", "sess:*", "new:*"))
    result = flush_cache(ActionContext(s, get_logger(), approved=approved), FlushCacheParams())
    assert result.detail["deleted"] == {"cache:*": 30}
    assert result.detail["approved_bounds"] == {"cache:*": 30}
    assert result.detail["not_approved"] == ["sess:*", "new:*"]
    assert (count(r, "cache:*"), count(r, "sess:*"), count(r, "new:*")) == (0, 5, 4)


def test_keys_written_after_the_approval_are_not_flushed(settings_env: Any, r: redis.Redis) -> None:
    """The approver saw 10 keys; 5 more matching keys written since are left (nothing new)."""
    s = settings_env(REMEDIATION_CACHE__FLUSH_PATTERNS=patterns("cache:*"))
    fill(r, "cache", 10)
    plan = plan_flush(CheckContext(s, get_logger()), FlushCacheParams())
    (seen,) = plan.items
    for n in range(5):
        r.set(f"cache:late:{n}", "x")
    ctx = ActionContext(
        s, get_logger(), approved=plan.keys(), approved_detail={seen.key: dict(seen.detail)}
    )
    result = flush_cache(ctx, FlushCacheParams())
    assert result.detail["approved_bounds"] == {"cache:*": 10}
    assert result.detail["deleted"] == {"cache:*": 10}
    assert count(r, "cache:*") == 5
