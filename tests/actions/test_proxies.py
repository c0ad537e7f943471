"""rotate_proxies against a pool tested through real proxies (tinyproxy) and a real origin."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from remediation.actions.proxies import RotateProxiesParams
from remediation.context import CheckContext
from remediation.errors import Refused
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.proxies import proxy_id
from remediation.registry import get_action
from remediation.runner import Runner
from tests.support.http_doubles import Behaviour, Origin, ProxyProcess
from tests.support.proxy_pool import (
    expire_quarantine,
    kinds,
    pool_settings,
    published,
    record,
    rotate,
    run_check,
)
from tests.support.runner import Recorder
from tests.support.services import RedisServer


def backoff(r: redis.Redis, url: str) -> tuple[str, int, int]:
    """State, quarantine count and back-off seconds of one proxy."""
    rec = record(r, url)
    seconds = round(float(rec["quarantine_until"]) - float(rec["quarantined_at"]))
    return rec["state"], int(rec["quarantine_count"]), seconds


def test_rotation_quarantines_failing_proxies_and_republishes(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """Banned and dead proxies leave the published set; the result names them without passwords."""
    origin.behaviour["banned"] = Behaviour(status=403)
    ok1, ok2 = proxy("ok1").url(), proxy("ok2").url()
    banned = proxy("banned", auth=("scraper", "s3cret-pw")).url()
    gone = proxy("gone")
    gone.stop()
    s = pool_settings(
        settings_env, [ok1, ok2, banned, gone.url()], origin, REMEDIATION_PROXIES__MIN_ACTIVE="2"
    )
    run_check(s)
    result = rotate(s)
    assert result.ok and result.changed
    d = result.detail
    assert (d["active_before"], d["active_after"], d["healthy_after"]) == (4, 2, 2)
    assert {p["id"] for p in d["quarantined"]} == {proxy_id(banned), proxy_id(gone.url())}
    assert published(r) == {ok1, ok2}
    assert backoff(r, banned) == ("quarantined", 1, 60)
    assert "s3cret-pw" not in json.dumps(result.model_dump(mode="json"))
    again = rotate(s)
    assert again.ok and not again.changed and published(r) == {ok1, ok2}


def test_quarantine_backoff_doubles_up_to_the_cap(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """A proxy still banned at each re-test is parked 60, 120, 200 (cap), 200 seconds."""
    origin.behaviour["banned"] = Behaviour(status=403)
    banned = proxy("banned").url()
    s = pool_settings(
        settings_env,
        [banned, proxy("ok1").url(), proxy("ok2").url()],
        origin,
        REMEDIATION_PROXIES__QUARANTINE_BASE_SECONDS="60",
        REMEDIATION_PROXIES__QUARANTINE_MAX_SECONDS="200",
    )
    seen = []
    for _ in range(4):
        assert "proxy_banned" in kinds(run_check(s))
        rotate(s)
        seen.append(backoff(r, banned))
        assert banned not in published(r)
        expire_quarantine(r, banned)
    assert seen == [
        ("quarantined", 1, 60),
        ("quarantined", 2, 120),
        ("quarantined", 3, 200),
        ("quarantined", 4, 200),
    ]
    assert origin.counts["banned"] == 4


def test_recovered_proxy_is_promoted_and_published(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """A quarantined proxy that passes its re-test is active again and back in the set."""
    origin.behaviour["flaky"] = Behaviour(status=429)
    flaky, steady = proxy("flaky").url(), proxy("steady").url()
    s = pool_settings(settings_env, [flaky, steady], origin)
    run_check(s)
    rotate(s)
    assert published(r) == {steady}
    origin.behaviour["flaky"] = Behaviour()
    expire_quarantine(r, flaky)
    assert list(kinds(run_check(s))) == ["proxy_recovered"]
    result = rotate(s)
    assert [p["id"] for p in result.detail["promoted"]] == [proxy_id(flaky)]
    assert (result.detail["active_before"], result.detail["active_after"]) == (1, 2)
    assert record(r, flaky)["state"] == "active" and published(r) == {flaky, steady}
    assert run_check(s) == []  # what verification sees: the condition is gone


def test_min_active_is_never_violated_and_the_action_escalates(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """With min_active 2 and one healthy proxy, the least bad failing one stays and ok is False."""
    origin.behaviour["banned"] = Behaviour(status=403)
    ok, banned = proxy("ok").url(), proxy("banned").url()
    gone = proxy("gone")
    gone.stop()
    s = pool_settings(
        settings_env, [ok, banned, gone.url()], origin, REMEDIATION_PROXIES__MIN_ACTIVE="2"
    )
    found = kinds(run_check(s))
    assert found["proxy_pool_low"].observed == 1
    result = rotate(s)
    assert not result.ok
    assert result.summary.startswith("proxy pool below its minimum: 1 healthy active proxies")
    assert [p["id"] for p in result.detail["kept_failing"]] == [proxy_id(banned)]
    assert [p["id"] for p in result.detail["quarantined"]] == [proxy_id(gone.url())]
    assert published(r) == {ok, banned}
    sent = Recorder()
    outcome = Runner(s, sent).run_action("rotate_proxies", {"target": "self"}, task_id="rot-1")
    assert outcome.outcome == "failed"
    (notice,) = [kw for task, kw, _ in sent.sent if task == "remediation.act.notify"]
    assert "below its minimum" in notice["text"]
    assert len(published(r)) == 2


def test_consecutive_failures_mark_a_proxy_dead(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """After dead_after_failures failed tests in a row a proxy is dead, parked for the maximum."""
    gone = proxy("gone")
    gone.stop()
    s = pool_settings(
        settings_env,
        [gone.url(), proxy("ok").url()],
        origin,
        REMEDIATION_PROXIES__DEAD_AFTER_FAILURES="2",
        REMEDIATION_PROXIES__QUARANTINE_MAX_SECONDS="900",
    )
    run_check(s)
    rotate(s)
    assert backoff(r, gone.url()) == ("quarantined", 1, 60)
    expire_quarantine(r, gone.url())
    assert "proxy_dead" in kinds(run_check(s))
    result = rotate(s)
    assert [p["id"] for p in result.detail["dead"]] == [proxy_id(gone.url())]
    assert backoff(r, gone.url()) == ("dead", 2, 900)
    assert record(r, gone.url())["consecutive_failures"] == "2"
    assert gone.url() not in published(r)


def test_only_the_pools_redis_and_nothing_to_rotate_is_a_quiet_refusal(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer
) -> None:
    """The target must be REMEDIATION_PROXIES__REDIS_TARGET (a case variant is its configured
    name, another Redis is refused); with no proxy configured the call is refused as
    nothing to rotate, without a notice and without spending the budget."""
    urls = {"Pool": redis_server.url(0), "cache": redis_server.url(3)}
    s = settings_env(
        REMEDIATION_REDIS_TARGETS=json.dumps(urls),
        REMEDIATION_PROXIES__REDIS_TARGET="Pool",
        REMEDIATION_PROXIES__PROXY_LIST=json.dumps(["http://127.0.0.1:1 eu"]),
    )
    resolve = get_action("rotate_proxies").resolve
    assert resolve is not None
    ctx = CheckContext(s, get_logger())
    assert resolve(ctx, RotateProxiesParams(target="POOL")).params.target == "Pool"
    with pytest.raises(Refused, match="lives on Redis target 'Pool', not 'cache'"):
        resolve(ctx, RotateProxiesParams(target="cache"))
    s = settings_env(
        REMEDIATION_REDIS_TARGETS=json.dumps(urls),
        REMEDIATION_PROXIES__REDIS_TARGET="Pool",
        REMEDIATION_PROXIES__PROXY_LIST="[]",
    )
    sent = Recorder()
    out = Runner(s, sent).run_action("rotate_proxies", {"target": "pool"}, task_id="rot-none")
    assert (out.outcome, out.reason.startswith("nothing to rotate")) == ("refused", True)
    assert sent.sent == [] and r.zcard(keys.budget("rotate_proxies")) == 0
