"""throttle_sync / restore_sync, switch_fallback_model and pause / resume of the low-priority
queue, against a real redis-server and (for the queue) a real Celery worker process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from remediation.actions.pauses import (
    PauseLowPriorityParams,
    ResumeLowPriorityParams,
    pause_low_priority,
    resolve_pause,
    resolve_resume,
    resume_low_priority,
)
from remediation.actions.rate_limits import (
    RestoreSyncParams,
    SwitchFallbackModelParams,
    ThrottleSyncParams,
    resolve_fallback,
    resolve_restore,
    resolve_throttle,
    restore_sync,
    switch_fallback_model,
    throttle_sync,
)
from remediation.celery_app import get_app
from remediation.checks.celery_workers import PausedQueuesParams, celery_paused_queues
from remediation.checks.rate_limits import RateLimitsParams, api_rate_limits
from remediation.context import ActionContext, CheckContext
from remediation.errors import ConfigError, Refused
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.runner import Runner
from remediation.throttles import PAUSED_INDEX, THROTTLE_INDEX, paused_key, throttle_key
from tests.support.base import wait_for
from tests.support.env import process_env
from tests.support.processes import WorkerProcess
from tests.support.runner import Recorder
from tests.support.services import RedisServer

INTERVALS = "sync:interval"


def act(s: Any) -> ActionContext:
    return ActionContext(s, get_logger())


def check(s: Any) -> CheckContext:
    return CheckContext(s, get_logger())


def endpoints(*names: str) -> str:
    return json.dumps([{"name": n, "url": "http://127.0.0.1:1/"} for n in names])


def expire(r: redis.Redis, key: str) -> None:
    """Move a record's expiry into the past, as if its time had passed."""
    r.hset(key, "expires_at", repr(time.time() - 1))


def test_throttle_multiplies_once_and_restores_after_expiry(
    settings_env: Any, r: redis.Redis
) -> None:
    """An absent interval becomes 5 min x 2; again does not multiply; when due, the check
    reports it, restore_sync removes the field again, and the check goes quiet."""
    s = settings_env()
    first = throttle_sync(act(s), ThrottleSyncParams(integration="shopify"))
    assert (first.changed, first.detail["before"], first.detail["after"]) == (True, 300.0, 600.0)
    assert r.hget(INTERVALS, "shopify") == b"600"
    again = throttle_sync(act(s), ThrottleSyncParams(integration="shopify"))
    assert (again.changed, again.detail["status"], r.hget(INTERVALS, "shopify")) == (
        False,
        "extended",
        b"600",
    )
    early = restore_sync(act(s), RestoreSyncParams(integration="shopify"))
    assert (early.changed, early.detail["status"]) == (False, "not_due")
    check = CheckContext(s, get_logger())
    assert api_rate_limits(check, RateLimitsParams()) == []
    expire(r, throttle_key("shopify"))
    (due,) = api_rate_limits(check, RateLimitsParams())
    assert (due.kind, due.subject) == ("api_sync_throttle_expired", "shopify")
    done = restore_sync(act(s), RestoreSyncParams(integration="shopify"))
    assert (done.changed, done.detail["status"], done.detail["after"]) == (True, "restored", None)
    assert r.hget(INTERVALS, "shopify") is None
    assert not r.exists(throttle_key("shopify")) and not r.sismember(THROTTLE_INDEX, "shopify")
    assert api_rate_limits(check, RateLimitsParams()) == []


def test_restore_puts_back_a_set_interval_but_never_overrides_a_newer_one(
    settings_env: Any, r: redis.Redis
) -> None:
    """A configured 120 s goes to 240 s and back; an interval someone changed since stays."""
    s = settings_env()
    r.hset(INTERVALS, mapping={"shopify": "120", "coingecko": "60"})
    throttle_sync(act(s), ThrottleSyncParams(integration="shopify"))
    throttle_sync(act(s), ThrottleSyncParams(integration="coingecko"))
    assert r.hmget(INTERVALS, ["shopify", "coingecko"]) == [b"240", b"120"]
    r.hset(INTERVALS, "coingecko", "900")  # an operator's change while throttled
    back = restore_sync(act(s), RestoreSyncParams(integration="shopify", force=True))
    kept = restore_sync(act(s), RestoreSyncParams(integration="coingecko", force=True))
    assert (back.detail["status"], kept.detail["status"]) == ("restored", "left_alone")
    assert r.hmget(INTERVALS, ["shopify", "coingecko"]) == [b"120", b"900"]
    assert r.smembers(THROTTLE_INDEX) == set()


def test_throttle_refuses_a_non_numeric_interval_and_bad_names(
    settings_env: Any, r: redis.Redis
) -> None:
    """A garbage interval is an error naming it, nothing is recorded; names are validated."""
    s = settings_env()
    r.hset(INTERVALS, "shopify", "often")
    with pytest.raises(redis.ResponseError, match="sync interval of shopify"):
        throttle_sync(act(s), ThrottleSyncParams(integration="shopify"))
    assert not r.exists(throttle_key("shopify"))
    with pytest.raises(ValidationError, match="integration"):
        ThrottleSyncParams(integration="shop ify; DEL *")


def test_fallback_model_flag_expires_by_itself_and_is_idempotent(
    settings_env: Any, r: redis.Redis
) -> None:
    """The flag is set with a TTL (the app reverts when it expires); again it only renews the
    TTL; a different model an operator set is left alone."""
    s = settings_env(REMEDIATION_RATE_LIMITS__FALLBACK_SECONDS="120")
    first = switch_fallback_model(act(s), SwitchFallbackModelParams())
    assert (first.changed, r.get("llm:fallback_model")) == (True, b"gpt-3.5-turbo")
    assert 0 < r.ttl("llm:fallback_model") <= 120
    again = switch_fallback_model(act(s), SwitchFallbackModelParams())
    assert (again.changed, again.detail["status"]) == (False, "extended")
    r.set("llm:fallback_model", "gpt-4o-mini")
    other = switch_fallback_model(act(s), SwitchFallbackModelParams(model="gpt-3.5-turbo"))
    assert (other.changed, other.detail["status"]) == (False, "other_model")
    assert r.get("llm:fallback_model") == b"gpt-4o-mini"


def test_queue_actions_only_act_on_the_own_cluster_and_never_its_own_queue(
    settings_env: Any, r: redis.Redis
) -> None:
    """target must be "self" (any case); pausing the remediation worker's own queue is
    refused by the resolve step even when configuration slipped past the settings check."""
    s = settings_env()
    with pytest.raises(Refused, match="always 'self'"):
        resolve_pause(check(s), PauseLowPriorityParams(target="app"))
    with pytest.raises(Refused, match="always 'self'"):
        resolve_resume(check(s), ResumeLowPriorityParams(target="app"))
    assert resolve_pause(check(s), PauseLowPriorityParams(target="SELF")).params.target == "self"
    with pytest.raises(ValidationError, match="use 'self'"):
        PausedQueuesParams(target="app")
    with pytest.raises(ConfigError, match=r"LOW_PRIORITY_QUEUE.*own queue"):
        settings_env(REMEDIATION_RATE_LIMITS__LOW_PRIORITY_QUEUE="celery")
    own = s.rate_limits.model_copy(update={"low_priority_queue": "celery"})
    with pytest.raises(Refused, match="remediation worker's own queue"):
        resolve_pause(check(s.model_copy(update={"rate_limits": own})), PauseLowPriorityParams())
    assert not r.exists(paused_key("celery"))


def test_throttle_only_configured_endpoints_in_their_configured_spelling(
    settings_env: Any, r: redis.Redis
) -> None:
    """'SHOPIFY' is the configured 'Shopify': its field is throttled once and 'shopify' is
    held by the same cooldown; an integration that is not configured is refused and its
    field never written; only one use of the budget is spent."""
    s = settings_env(REMEDIATION_RATE_LIMITS__ENDPOINTS=endpoints("Shopify", "openai"))
    runner = Runner(s, Recorder())
    outcomes = [
        runner.run_action("throttle_sync", {"integration": name})
        for name in ("SHOPIFY", "shopify", "coingecko")
    ]
    assert [o.outcome for o in outcomes] == ["succeeded", "suppressed", "refused"]
    assert "REMEDIATION_RATE_LIMITS__ENDPOINTS" in outcomes[2].reason
    assert r.hgetall(INTERVALS) == {b"Shopify": b"600"}
    assert r.smembers(THROTTLE_INDEX) == {b"Shopify"}
    assert r.zcard(keys.budget("throttle_sync")) == 1


def test_restore_undoes_an_old_throttle_and_refuses_when_nothing_is_throttled(
    settings_env: Any, r: redis.Redis
) -> None:
    """A throttle recorded under an older configuration (its integration no longer an
    endpoint) is still restored, by any case variant; a configured endpoint that is not
    throttled is refused quietly (no notice); an unknown one is refused with a notice."""
    s = settings_env(REMEDIATION_RATE_LIMITS__ENDPOINTS=endpoints("Shopify"))
    throttle_sync(act(s), ThrottleSyncParams(integration="legacy"))  # an older configuration
    resolved = resolve_restore(check(s), RestoreSyncParams(integration="LEGACY")).params
    assert resolved.integration == "legacy"
    sent = Recorder()
    runner = Runner(s, sent)
    done = runner.run_action("restore_sync", {"integration": "LEGACY", "force": True})
    assert (done.outcome, done.result and done.result["detail"]["status"]) == (
        "succeeded",
        "restored",
    )
    assert r.hget(INTERVALS, "legacy") is None and r.smembers(THROTTLE_INDEX) == set()
    quiet = runner.run_action("restore_sync", {"integration": "shopify"})
    assert (
        quiet.outcome == "refused"
        and quiet.reason == "Shopify is not throttled: nothing to restore"
    )
    assert sent.sent == []
    loud = runner.run_action("restore_sync", {"integration": "legacy"})
    assert loud.outcome == "refused" and "not a configured rate-limit endpoint" in loud.reason
    assert [k["kind"] for _, k, _ in sent.sent] == ["action_refused"]
    assert r.zcard(keys.budget("restore_sync")) == 1


def test_rate_limit_actions_only_on_the_rate_limit_redis(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer
) -> None:
    """Throttle, restore and the fallback flag act only on RATE_LIMITS__REDIS_TARGET, named
    as configured; the fallback model is the configured one, never a caller's pick."""
    s = settings_env(
        REMEDIATION_REDIS_TARGETS=json.dumps(
            {"Api": redis_server.url(0), "cache": redis_server.url(3)}
        ),
        REMEDIATION_RATE_LIMITS__REDIS_TARGET="Api",
        REMEDIATION_RATE_LIMITS__ENDPOINTS=endpoints("shopify"),
    )
    ctx = check(s)
    cases: list[tuple[Any, Any]] = [
        (resolve_throttle, ThrottleSyncParams(target="cache", integration="shopify")),
        (resolve_restore, RestoreSyncParams(target="cache", integration="shopify")),
        (resolve_fallback, SwitchFallbackModelParams(target="cache")),
    ]
    for resolve, params in cases:
        with pytest.raises(Refused, match="lives on Redis target 'Api', not 'cache'"):
            resolve(ctx, params)
    model = resolve_fallback(ctx, SwitchFallbackModelParams(target="API")).params
    assert (model.target, model.model) == ("Api", "gpt-3.5-turbo")
    runner = Runner(s, Recorder())
    picked = runner.run_action("switch_fallback_model", {"target": "api", "model": "gpt-4o"})
    assert picked.outcome == "refused" and "FALLBACK_MODEL" in picked.reason
    assert r.get("llm:fallback_model") is None
    first = runner.run_action("switch_fallback_model", {"target": "api"})
    again = runner.run_action("switch_fallback_model", {"target": "API", "model": "gpt-3.5-turbo"})
    assert (first.outcome, again.outcome) == ("succeeded", "suppressed")
    assert r.get("llm:fallback_model") == b"gpt-3.5-turbo"


def test_resume_only_the_configured_or_a_paused_queue(settings_env: Any, r: redis.Redis) -> None:
    """resume names the configured low-priority queue (default) or one recorded as paused;
    another queue is refused; a queue that is not paused is refused quietly."""
    s = settings_env()
    ctx = check(s)
    with pytest.raises(Refused, match="neither REMEDIATION_RATE_LIMITS__LOW_PRIORITY_QUEUE"):
        resolve_resume(ctx, ResumeLowPriorityParams(queue="payments"))
    with pytest.raises(Refused, match="'low_priority' is not paused") as quiet:
        resolve_resume(ctx, ResumeLowPriorityParams())
    assert quiet.value.notice is False
    r.hset(paused_key("bulk"), mapping={"workers": "[]", "expires_at": "0"})
    r.sadd(PAUSED_INDEX, "bulk")
    assert resolve_resume(ctx, ResumeLowPriorityParams(queue="bulk")).params.queue == "bulk"
    r.hset(paused_key("low_priority"), mapping={"workers": "[]", "expires_at": "0"})
    resolved = resolve_resume(ctx, ResumeLowPriorityParams(target="Self")).params
    assert (resolved.target, resolved.queue) == ("self", "low_priority")


# --- a real worker consuming celery and low_priority -----------------------------------------


@pytest.fixture(scope="module")
def lowprio_worker(redis_server: RedisServer, audit_db: str) -> Iterator[WorkerProcess]:
    """One worker process consuming both queues, on a broker database of its own."""
    env = process_env(
        redis_server,
        audit_db,
        REMEDIATION_BROKER_URL=redis_server.url(5),
        REMEDIATION_RESULT_BACKEND=redis_server.url(6),
    )
    worker = WorkerProcess(env, "lowprio", concurrency=1, extra_args=["-Q", "celery,low_priority"])
    try:
        yield worker.start()
    finally:
        worker.stop()


def queues_of(app: Any, worker: str | None = None) -> dict[str, list[str]]:
    """Queues each worker consumes (only that worker's when named: no waiting for others)."""
    inspect = app.control.inspect(timeout=2, destination=[worker] if worker else None)
    replies = inspect.active_queues() or {}
    return {w: sorted(q["name"] for q in qs) for w, qs in replies.items()}


def send(app: Any, queue: str) -> Any:
    return app.send_task(
        "remediation.check.redis_job_queue", kwargs={"target": "self"}, queue=queue
    )


def test_pause_stops_low_priority_and_resume_brings_it_back(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer, lowprio_worker: WorkerProcess
) -> None:
    """After pause a low_priority task waits in its queue while a celery task runs; a consumer
    that reappears is reported and paused again; the check reports the pause once due; after
    resume the waiting task runs. active_queues agrees at every step."""
    s = settings_env(
        REMEDIATION_BROKER_URL=redis_server.url(5), REMEDIATION_RESULT_BACKEND=redis_server.url(6)
    )
    get_app.cache_clear()
    app = get_app()
    broker = redis.Redis.from_url(redis_server.url(5))
    try:
        (name,) = wait_for(lambda: list(queues_of(app)), 20, 0.3, "worker answers inspect")
        assert queues_of(app, name) == {name: ["celery", "low_priority"]}
        assert send(app, "low_priority").get(timeout=30)["status"] == "ok"

        paused = pause_low_priority(act(s), PauseLowPriorityParams())
        assert paused.ok and paused.detail["acknowledged"] == [name]
        assert paused.detail["confirmed"] == [name]
        assert queues_of(app, name) == {name: ["celery"]}

        check = CheckContext(s, get_logger())
        assert celery_paused_queues(check, PausedQueuesParams()) == []
        app.control.add_consumer("low_priority", destination=[name], reply=True)  # a new consumer
        wait_for(lambda: "low_priority" in queues_of(app, name)[name], 10, 0.2, "consumer back")
        (leak,) = celery_paused_queues(check, PausedQueuesParams())
        assert (leak.kind, leak.evidence["consuming"]) == ("celery_queue_pause_incomplete", [name])
        expires = r.hget(paused_key("low_priority"), "expires_at")
        repaused = pause_low_priority(act(s), PauseLowPriorityParams())
        assert repaused.detail["confirmed"] == [name]
        assert r.hget(paused_key("low_priority"), "expires_at") == expires  # not extended

        waiting = send(app, "low_priority")
        assert send(app, "celery").get(timeout=30)["status"] == "ok"
        time.sleep(1.0)
        assert not waiting.ready() and broker.llen("low_priority") == 1
        early = resume_low_priority(act(s), ResumeLowPriorityParams())
        assert not early.changed and "stays paused" in early.summary
        expire(r, paused_key("low_priority"))
        (due,) = celery_paused_queues(check, PausedQueuesParams())
        assert (due.kind, due.subject) == ("celery_queue_pause_expired", "low_priority")

        resumed = resume_low_priority(act(s), ResumeLowPriorityParams(queue=due.subject))
        assert resumed.ok and resumed.detail["acknowledged"] == [name]
        assert waiting.get(timeout=30)["status"] == "ok"
        assert queues_of(app, name) == {name: ["celery", "low_priority"]}
        assert not r.exists(paused_key("low_priority")) and not r.smembers(PAUSED_INDEX)
        assert celery_paused_queues(check, PausedQueuesParams()) == []
    finally:
        broker.close()
        get_app.cache_clear()
