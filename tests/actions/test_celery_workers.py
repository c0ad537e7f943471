"""scale_workers and revoke_stuck_tasks against real worker processes, each on a broker
database of its own (the monitored cluster is REMEDIATION_WORKERS__BROKER_URL)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from remediation import celery_cluster as cw
from remediation.actions.celery_workers import (
    RevokeStuckTasksParams,
    ScaleWorkersParams,
    plan_revoke,
    resolve_revoke,
    resolve_scale,
    revoke_stuck_tasks,
    scale_workers,
)
from remediation.celery_cluster import monitor_app, pool_sizes, scale_key
from remediation.checks.celery_workers import CeleryQueuesParams, celery_queues
from remediation.context import ActionContext, CheckContext
from remediation.errors import Deferred, Refused, TargetError
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.runner import Runner
from tests.support.base import wait_for
from tests.support.celery_workers import LINGER, SECRET, active_ids, sleeping_worker
from tests.support.env import process_env
from tests.support.processes import WorkerProcess
from tests.support.runner import Recorder
from tests.support.services import RedisServer

SCALER_DB, SLEEPER_DB, RESULT_DB = 13, 14, 15
WINDOW = 3  # REMEDIATION_WORKERS__SCALE_DOWN_STABILIZATION_SECONDS in these tests


def node(name: str) -> str:
    """A WorkerProcess's node name (-n name@%h)."""
    return f"{name}@{socket.gethostname()}"


def pool_target(worker: str | None) -> str:
    target = {"name": "pool", "queues": ["celery", "backlog"], "min": 1, "max": 2}
    return json.dumps([{**target, "worker": worker} if worker else target])


@pytest.fixture(scope="module")
def scaler(redis_server: RedisServer, audit_db: str) -> Iterator[WorkerProcess]:
    """One worker, concurrency 1, consuming 'celery' only (not 'backlog'), on broker db 13."""
    redis_server.empty(SCALER_DB)
    env = process_env(
        redis_server,
        audit_db,
        REMEDIATION_BROKER_URL=redis_server.url(SCALER_DB),
        REMEDIATION_RESULT_BACKEND=redis_server.url(RESULT_DB),
    )
    worker = WorkerProcess(env, "scaler", concurrency=1, extra_args=["-Q", "celery"])
    try:
        yield worker.start()
    finally:
        worker.stop()
        cw.reset()


@pytest.fixture(scope="module")
def sleeper(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, audit_db: str
) -> Iterator[WorkerProcess]:
    """A worker, concurrency 2, that runs the test.sleep_for task, on broker db 14."""
    worker = sleeping_worker(
        tmp_path_factory.mktemp("tasks"), redis_server, audit_db, "sleeper", SLEEPER_DB
    )
    try:
        yield worker.start()
    finally:
        worker.stop()
        cw.reset()


def act(s: Any) -> ActionContext:
    return ActionContext(s, get_logger())


def scale(s: Any, direction: str) -> Any:
    return scale_workers(act(s), ScaleWorkersParams(target="pool", direction=direction))


def kinds(s: Any) -> dict[str, Any]:
    return {f.kind: f for f in celery_queues(CheckContext(s, get_logger()), CeleryQueuesParams())}


def test_scale_up_on_backlog_then_down_after_the_window_within_bounds(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer, scaler: WorkerProcess
) -> None:
    """60 messages (15 at priority 9) waiting in 'backlog' are a celery_queue_backlog of 60; a
    scale-down is held while they wait; up grows the pool 1 -> 2 processes (confirmed by
    stats) and fails at max; once a consumer drains them the pool is oversized, a scale-down
    inside the window is refused, after it the pool shrinks 2 -> 1, and at min stays."""
    name = node("scaler")
    env = {
        "REMEDIATION_WORKERS__BROKER_URL": redis_server.url(SCALER_DB),
        "REMEDIATION_WORKERS__QUEUES": '["celery", "backlog"]',
        "REMEDIATION_WORKERS__SCALE_DOWN_STABILIZATION_SECONDS": str(WINDOW),
    }
    s = settings_env(REMEDIATION_WORKERS__SCALE_TARGETS=pool_target(None), **env)
    app = monitor_app(s)
    # unnamed, a target resizes every worker consuming its queues: here the scaler only
    assert cw.scale_workers_of(app, s.workers.scale_targets[0]) == [name]
    # named (no broadcast to wait for: faster, and what the rest of this test uses)
    s = settings_env(REMEDIATION_WORKERS__SCALE_TARGETS=pool_target(name), **env)
    assert pool_sizes(app, [name]) == {name: 1}
    for i in range(60):
        app.send_task(
            "celery.accumulate", args=[i], queue="backlog", priority=9 if i % 4 == 0 else None
        )

    found = kinds(s)
    backlog = found["celery_queue_backlog"]
    assert (backlog.subject, backlog.observed, backlog.severity) == ("backlog", 60, "warning")
    assert backlog.evidence["by_priority"]["9"] == 15
    assert backlog.evidence["scale_targets"] == ["pool"]
    assert "celery_pool_oversized" not in found and "celery_pool_at_max" not in found
    with pytest.raises(Deferred, match="backlog"):  # the incident stays open, nothing moves
        scale(s, "down")

    up = scale(s, "up")
    assert (up.ok, up.changed) == (True, True), up.summary
    assert up.detail["workers"][name] == {
        "before": 1,
        "wanted": 2,
        "after": 2,
        "reply": "pool will grow",
    }
    scaled_up_at = time.time()
    assert pool_sizes(app, [name]) == {name: 2}
    at_max = scale(s, "up")
    assert (at_max.ok, at_max.changed) == (False, False) and "at max" in at_max.summary
    assert pool_sizes(app, [name]) == {name: 2}
    at_max_finding = kinds(s)["celery_pool_at_max"]  # runbook 001: now reduce load instead
    assert (at_max_finding.subject, at_max_finding.severity) == ("pool", "high")

    app.control.add_consumer("backlog", destination=[name], reply=True)
    broker = redis.Redis.from_url(redis_server.url(SCALER_DB))
    drained = lambda: sum(cw.queue_depths(s, ["backlog"])["backlog"].values()) == 0  # noqa: E731
    wait_for(lambda: drained() and broker.hlen("unacked") == 0, 20, 0.1, "backlog drained")
    broker.close()

    found = kinds(s)
    assert "celery_queue_backlog" not in found
    oversized = found["celery_pool_oversized"]
    assert (oversized.subject, oversized.evidence["pool"]) == ("pool", {name: 2})
    with pytest.raises(Deferred, match="held") as early:
        scale(s, "down")
    assert time.time() - scaled_up_at < WINDOW, "drained too slowly to test the window"
    assert early.value.retry_at is not None and early.value.retry_at > time.time()
    assert pool_sizes(app, [name]) == {name: 2}

    time.sleep(max(0.0, scaled_up_at + WINDOW - time.time()) + 0.2)
    down = scale(s, "down")
    assert (down.ok, down.changed) == (True, True), down.summary
    assert (
        down.detail["workers"][name]["before"] == 2 and down.detail["workers"][name]["after"] == 1
    )
    assert pool_sizes(app, [name]) == {name: 1}
    at_min = scale(s, "down")
    assert (at_min.ok, at_min.changed) == (True, False) and "at min" in at_min.summary
    assert pool_sizes(app, [name]) == {name: 1}
    assert kinds(s) == {}
    assert set(r.hkeys(scale_key("pool"))) == {b"last_busy", b"last_up", b"last_down", b"by"}


def test_scale_targets_and_params_are_validated_before_anything_runs(
    settings_env: Any, r: redis.Redis
) -> None:
    """A scale target resolves to its configured name (exactly, else its only
    case-insensitive match); an unknown or ambiguous one is refused naming the known ones,
    through the runner for free; a bad direction and a revoke target other than the
    cluster are rejected by the params models."""
    targets = [
        {"name": "web", "backend": "compose", "project": "shop", "service": "worker"},
        {"name": "Jobs"},
        {"name": "jobs"},
    ]
    s = settings_env(REMEDIATION_WORKERS__SCALE_TARGETS=json.dumps(targets))
    ctx = CheckContext(s, get_logger())
    resolved = {
        name: resolve_scale(ctx, ScaleWorkersParams(target=name, direction="up"))
        for name in ("WEB", "web", "Jobs", "jobs")
    }
    assert {k: v.params.target for k, v in resolved.items()} == {
        "WEB": "web",
        "web": "web",
        "Jobs": "Jobs",
        "jobs": "jobs",
    }
    assert resolved["WEB"].params.direction == "up"
    with pytest.raises(Refused, match=r"no scale target 'nope'.*\(web, Jobs, jobs\)"):
        resolve_scale(ctx, ScaleWorkersParams(target="nope", direction="up"))
    with pytest.raises(Refused, match=r"several scale targets match 'JOBS'"):
        resolve_scale(ctx, ScaleWorkersParams(target="JOBS", direction="up"))
    with pytest.raises(TargetError, match=r"no scale target 'nope'"):
        scale_workers(act(s), ScaleWorkersParams(target="nope", direction="up"))
    sent = Recorder()
    out = Runner(s, sent).run_action("scale_workers", {"target": "nope", "direction": "up"})
    assert out.outcome == "refused" and "(web, Jobs, jobs)" in (out.reason or "")
    assert r.zcard(keys.budget("scale_workers")) == 0
    assert r.smembers(keys.BREAKER_INDEX) == set()
    assert [k["kind"] for _, k, _ in sent.sent] == ["action_refused"]
    with pytest.raises(ValidationError, match="direction"):
        ScaleWorkersParams(target="web", direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="its target name is 'celery'"):
        RevokeStuckTasksParams(target="web")


def test_case_variants_of_a_scale_target_share_one_cooldown(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer, scaler: WorkerProcess
) -> None:
    """scale_workers down on "pool" acts (the pool is at its minimum: nothing to shrink);
    the same call on "POOL" and "Pool" is suppressed by the one cooldown of "pool", and
    only the breaker "scale_workers:pool" exists."""
    s = settings_env(
        REMEDIATION_WORKERS__BROKER_URL=redis_server.url(SCALER_DB),
        REMEDIATION_WORKERS__SCALE_TARGETS=pool_target(node("scaler")),
    )
    assert pool_sizes(monitor_app(s), [node("scaler")]) == {node("scaler"): 1}
    runner = Runner(s, Recorder())
    outcomes = [
        runner.run_action("scale_workers", {"target": t, "direction": "down"})
        for t in ("pool", "POOL", "Pool")
    ]
    assert [o.outcome for o in outcomes] == ["succeeded", "suppressed", "suppressed"]
    assert all("cooling down" in (o.reason or "") for o in outcomes[1:])
    assert r.smembers(keys.BREAKER_INDEX) == {b"scale_workers:pool"}
    assert list(r.scan_iter(match=keys.cooldown("scale_workers", "*"))) == [
        keys.cooldown("scale_workers", "pool").encode()
    ]


def test_revoke_is_opt_in_and_revokes_the_oldest_stuck_task_first(
    settings_env: Any, redis_server: RedisServer, sleeper: WorkerProcess
) -> None:
    """With REVOKE_STUCK unset the call is refused and the variable is named; opted in with
    MAX_REVOKES_PER_RUN=1, only the older of two stuck tasks is terminated, confirmed gone
    from the worker's active list while the other runs on; no argument leaks."""
    env = {
        "REMEDIATION_WORKERS__BROKER_URL": redis_server.url(SLEEPER_DB),
        "REMEDIATION_WORKERS__EXPECTED_SECONDS": '{"test.sleep_for": 0.1}',
        "REMEDIATION_WORKERS__STUCK_FACTOR": "1",
        "REMEDIATION_WORKERS__MAX_REVOKES_PER_RUN": "1",
    }
    s = settings_env(**env)
    app = monitor_app(s)
    old = app.send_task("test.sleep_for", args=[20], kwargs={"password": SECRET})
    inspect = app.control.inspect(timeout=1, destination=[node("sleeper")])
    active = lambda: {t["id"] for ts in (inspect.active() or {}).values() for t in ts}  # noqa: E731
    wait_for(lambda: old.id in active(), 15, 0.2, "first task active")
    new = app.send_task("test.sleep_for", args=[20], kwargs={"password": SECRET})
    try:
        wait_for(lambda: {old.id, new.id} <= active(), 15, 0.2, "both tasks active")
        time.sleep(0.3)  # both past their expected 0.1 s
        with pytest.raises(Refused, match="REMEDIATION_WORKERS__REVOKE_STUCK=true") as off:
            resolve_revoke(CheckContext(s, get_logger()), RevokeStuckTasksParams())
        assert not off.value.notice
        with pytest.raises(Refused, match="opt-in"):
            revoke_stuck_tasks(act(s), RevokeStuckTasksParams())
        assert {old.id, new.id} <= active()

        s = settings_env(REMEDIATION_WORKERS__REVOKE_STUCK="true", **env)
        done = revoke_stuck_tasks(act(s), RevokeStuckTasksParams())
        assert (done.ok, done.changed) == (True, True), done.summary
        assert [t["id"] for t in done.detail["revoked"]] == [old.id]
        assert done.detail["revoked"][0]["name"] == "test.sleep_for"
        assert (done.detail["confirmed"], done.detail["left_stuck"]) == ([old.id], 1)
        assert SECRET not in done.model_dump_json()
        time.sleep(0.5)
        assert old.id not in active() and new.id in active()
    finally:
        app.control.revoke([old.id, new.id], terminate=True, signal="SIGTERM")


def test_revoke_off_is_refused_for_free_and_never_touches_the_remediators_own_tasks(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer, sleeper: WorkerProcess
) -> None:
    """Not opted in, revoke_stuck_tasks through the runner is refused quietly (no budget, no
    notice); opted in, of a remediation.act.* task and a test.sleep_for both past their
    expected time, only test.sleep_for is revoked and the remediator's task runs on."""
    env = {
        "REMEDIATION_WORKERS__BROKER_URL": redis_server.url(SLEEPER_DB),
        "REMEDIATION_WORKERS__EXPECTED_SECONDS": json.dumps({"test.sleep_for": 0.1, LINGER: 0.1}),
        "REMEDIATION_WORKERS__STUCK_FACTOR": "1",
    }
    sent = Recorder()
    off = Runner(settings_env(**env), sent).run_action("revoke_stuck_tasks", {})
    assert off.outcome == "refused" and "REVOKE_STUCK=true" in (off.reason or "")
    assert r.zcard(keys.budget("revoke_stuck_tasks")) == 0 and sent.sent == []
    s = settings_env(REMEDIATION_WORKERS__REVOKE_STUCK="true", **env)
    app = monitor_app(s)
    own = app.send_task(LINGER, args=[20])
    stuck = app.send_task("test.sleep_for", args=[20])
    try:
        wait_for(lambda: {own.id, stuck.id} <= active_ids(app), 15, 0.2, "both tasks active")
        time.sleep(0.3)  # both past their expected 0.1 s
        done = Runner(s, sent).run_action("revoke_stuck_tasks", {})
        assert done.outcome == "succeeded" and done.result is not None, done.reason
        detail = done.result["detail"]
        assert [t["id"] for t in detail["revoked"]] == [stuck.id]
        assert (detail["confirmed"], detail["left_stuck"]) == ([stuck.id], 0)
        time.sleep(0.5)
        assert own.id in active_ids(app) and stuck.id not in active_ids(app)
    finally:
        app.control.revoke([own.id, stuck.id], terminate=True, signal="SIGTERM")
        wait_for(lambda: not {own.id, stuck.id} & active_ids(app), 15, 0.2, "tasks ended")


def test_revoke_plan_lists_the_stuck_tasks_and_an_approval_revokes_only_those_approved(
    settings_env: Any, redis_server: RedisServer, sleeper: WorkerProcess
) -> None:
    """The plan lists both stuck tasks (name, id, worker, runtime; no argument) and revokes
    nothing; approved the first and one that is gone, only the first is revoked."""
    s = settings_env(
        REMEDIATION_WORKERS__BROKER_URL=redis_server.url(SLEEPER_DB),
        REMEDIATION_WORKERS__EXPECTED_SECONDS='{"test.sleep_for": 0.1}',
        REMEDIATION_WORKERS__STUCK_FACTOR="1",
        REMEDIATION_WORKERS__REVOKE_STUCK="true",
    )
    app = monitor_app(s)
    first = app.send_task("test.sleep_for", args=[20], kwargs={"password": SECRET})
    second = app.send_task("test.sleep_for", args=[20], kwargs={"password": SECRET})
    try:
        wait_for(lambda: {first.id, second.id} <= active_ids(app), 15, 0.2, "both tasks active")
        time.sleep(0.3)  # both past their expected 0.1 s
        plan = plan_revoke(CheckContext(s, get_logger()), RevokeStuckTasksParams())
        assert plan.keys() == {f"task:{first.id}", f"task:{second.id}"}
        assert {i.detail["worker"] for i in plan.items} == {node("sleeper")}
        assert all(i.detail["name"] == "test.sleep_for" for i in plan.items)
        assert SECRET not in plan.model_dump_json()
        time.sleep(0.5)
        assert {first.id, second.id} <= active_ids(app)  # planning revoked nothing
        approved = frozenset({f"task:{first.id}", "task:gone-since"})
        ctx = ActionContext(s, get_logger(), approved=approved)
        done = revoke_stuck_tasks(ctx, RevokeStuckTasksParams())
        assert [t["id"] for t in done.detail["revoked"]] == [first.id]
        assert done.detail["not_approved"] == 1
        time.sleep(0.5)
        assert first.id not in active_ids(app) and second.id in active_ids(app)
    finally:
        app.control.revoke([first.id, second.id], terminate=True, signal="SIGTERM")
        wait_for(lambda: not {first.id, second.id} & active_ids(app), 15, 0.2, "tasks ended")
