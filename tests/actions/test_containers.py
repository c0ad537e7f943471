"""restart_container against a real Docker engine: restart, back-off, flap guard, reset, and
one canonical container (name, full ID, ID prefix) behind every guard."""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from remediation.actions.containers import (
    ContainerParams,
    ResetRestartsParams,
    plan_restart,
    reset_container_restarts,
    resolve_container,
    resolve_reset,
    restart_container,
    state_key,
)
from remediation.context import ActionContext, CheckContext
from remediation.errors import Deferred, Refused
from remediation.findings import ActionResult
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.runner import Runner
from tests.support.base import wait_for
from tests.support.docker_compose import DOCKER_URL, ComposeProject, compose_project
from tests.support.runner import Recorder

SERVE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
CRASH = ["sh", "-c", "sleep 0.2; exit 1"]


def settings_for(settings_env: Any, project: ComposeProject, **extra: str) -> Any:
    return settings_env(
        REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
        REMEDIATION_CONTAINERS__PROJECT=project.name,
        **extra,
    )


def restart(settings: Any, ref: str) -> ActionResult | Refused | Deferred:
    """The resolve step, then the action, as the runner calls them (without the guards)."""
    ctx = ActionContext(settings, get_logger())
    try:
        resolved = resolve_container(ctx, ContainerParams(container=ref))
        return restart_container(dataclasses.replace(ctx, facts=resolved.facts), resolved.params)
    except (Refused, Deferred) as exc:
        return exc


def done(outcome: ActionResult | Refused | Deferred) -> ActionResult:
    assert isinstance(outcome, ActionResult), outcome
    return outcome


def test_exited_container_is_restarted_and_running_one_refused(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """An exited container runs again; a second call is refused: it is running (no notice)."""
    s = settings_for(settings_env, project)
    app = project.run(SERVE)
    app.stop(timeout=5)
    project.wait_status(app, "exited")

    result = done(restart(s, app.name))

    assert (result.ok, result.changed) == (True, True)
    assert project.status(app) == "running"
    assert result.detail["restarts_in_window"] == 1
    again = restart(s, app.name)
    assert isinstance(again, Refused) and not again.notice
    assert again.reason == f"{app.name} is running"


def test_crash_loop_backs_off_then_is_left_alone_and_escalated_once(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """Restarts wait 1, 2, 4, 4 s (deferred inside); the 6th call in the window gives up once."""
    s = settings_for(
        settings_env,
        project,
        REMEDIATION_CONTAINERS__RESTART_BACKOFF_BASE_SECONDS="1",
        REMEDIATION_CONTAINERS__RESTART_BACKOFF_MAX_SECONDS="4",
        REMEDIATION_CONTAINERS__FLAP_MAX_RESTARTS="5",
        REMEDIATION_CONTAINERS__FLAP_WINDOW_SECONDS="120",
    )
    app = project.run(CRASH)
    backoffs, restarted_at = [], []
    for _ in range(5):
        project.wait_status(app, "exited")
        restarted_at.append(time.monotonic())
        result = done(restart(s, app.name))
        assert (result.ok, result.changed) == (True, True), result.summary
        backoffs.append(result.detail["backoff_seconds"])
        if len(backoffs) < 5:
            project.wait_status(app, "exited")
            deferred = restart(s, app.name)
            assert isinstance(deferred, Deferred) and "backing off" in deferred.reason
            assert deferred.retry_at is not None
            assert project.status(app) == "exited"
            time.sleep(max(deferred.retry_at - time.time(), 0) + 0.1)
    assert backoffs == [1, 2, 4, 4, 4]
    gaps = [b - a for a, b in itertools.pairwise(restarted_at)]
    assert all(
        wait - 0.2 <= gap < wait + 1.5 for wait, gap in zip([1, 2, 4, 4], gaps, strict=True)
    ), gaps

    project.wait_status(app, "exited")
    escalated = done(restart(s, app.name))  # at the limit: gives up now, not after the wait
    assert (escalated.ok, escalated.changed) == (False, False)
    assert "left alone" in escalated.summary
    assert r.hget(state_key(app.name), "unmonitored_at") is not None
    assert r.ttl(state_key(app.name)) == -1  # kept until an operator clears it
    for _ in range(2):
        quiet = restart(s, app.name)
        assert isinstance(quiet, Refused) and not quiet.notice
        assert "left alone after repeated restarts" in quiet.reason
    assert project.status(app) == "exited"


def test_name_full_id_and_prefix_share_one_back_off(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """Restarted by name, the same container named by full ID or ID prefix is deferred by the
    same back-off, every guard key names it by its own name, and once it is left alone no
    spelling restarts it (issue 10, reproduction 3)."""
    s = settings_for(
        settings_env,
        project,
        REMEDIATION_CONTAINERS__RESTART_BACKOFF_BASE_SECONDS="60",
        REMEDIATION_CONTAINERS__FLAP_MAX_RESTARTS="2",
    )
    app = project.run(CRASH)
    project.wait_status(app, "exited")
    runner = Runner(s, Recorder())
    call = runner.run_action
    first = call("restart_container", {"container": app.name}, task_id="by-name")
    assert first.outcome == "succeeded"
    project.wait_status(app, "exited")
    started = project.started_at(app)
    for ref in (app.id, app.id[:12], app.id[:5]):
        again = call("restart_container", {"container": ref}, task_id=f"by-{ref}")
        assert again.outcome == "deferred" and "backing off" in again.reason, again
    assert project.started_at(app) == started
    assert {k.decode() for k in r.scan_iter(match="rem:restart:*")} == {state_key(app.name)}
    assert {k.decode() for k in r.scan_iter(match="rem:flap:restart_container:*")} == {
        keys.flap("restart_container", f"docker/{app.name}")
    }
    r.hset(state_key(app.name), "next_at", 0)  # the back-off is over: a second restart
    second = call("restart_container", {"container": app.id[:12]}, task_id="second")
    assert second.outcome == "succeeded", second
    project.wait_status(app, "exited")
    started = project.started_at(app)
    gave_up = call("restart_container", {"container": app.id}, task_id="give-up")
    assert gave_up.outcome == "failed" and "left alone" in gave_up.reason
    for ref in (app.name, app.id, app.id[:8]):
        refused = call("restart_container", {"container": ref}, task_id=f"after-{ref}")
        assert refused.outcome == "refused" and "left alone" in refused.reason
    assert project.started_at(app) == started


def test_project_kwarg_is_rejected(settings_env: Any, project: ComposeProject) -> None:
    """No call names another compose project: a `project` kwarg is rejected by the model."""
    with pytest.raises(ValidationError, match="project"):
        ContainerParams.model_validate({"container": "x", "project": "other"})


def test_reset_lets_the_worker_restart_an_abandoned_container(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """After reset_container_restarts (by ID prefix) the given-up container is restarted."""
    s = settings_for(
        settings_env,
        project,
        REMEDIATION_CONTAINERS__FLAP_MAX_RESTARTS="1",
        REMEDIATION_CONTAINERS__RESTART_BACKOFF_BASE_SECONDS="1",
    )
    app = project.run(CRASH)
    project.wait_status(app, "exited")
    assert done(restart(s, app.name)).changed
    project.wait_status(app, "exited")
    time.sleep(1.1)
    assert done(restart(s, app.name)).ok is False
    r.zadd(keys.flap("restart_container", f"docker/{app.name}"), {"x": time.time()})

    ctx = ActionContext(s, get_logger())
    resolved = resolve_reset(ctx, ResetRestartsParams(container=app.id[:10]))
    assert resolved.params.container == app.name
    cleared = reset_container_restarts(ctx, resolved.params)

    assert cleared.changed
    assert r.exists(state_key(app.name)) == 0
    assert r.exists(keys.flap("restart_container", f"docker/{app.name}")) == 0
    again = done(restart(s, app.name))
    assert (again.ok, again.changed, again.detail["restarts_in_window"]) == (True, True, 1)


def test_unhealthy_running_container_is_restarted(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """A running container failing its healthcheck is restarted too (container_unhealthy)."""
    s = settings_for(settings_env, project)
    sick = project.run(
        SERVE, healthcheck={"test": ["CMD", "false"], "interval": 200_000_000, "retries": 1}
    )
    wait_for(
        lambda: project.status(sick) and sick.attrs["State"]["Health"]["Status"] == "unhealthy",
        15,
        0.1,
        "the healthcheck to fail",
    )
    started = sick.attrs["State"]["StartedAt"]
    result = done(restart(s, sick.name))
    assert (result.ok, result.changed, result.detail["health"]) == (True, True, "unhealthy")
    assert project.status(sick) == "running"
    assert sick.attrs["State"]["StartedAt"] != started


def test_containers_outside_the_project_are_refused(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """A container of another project is refused before any guard and stays exited."""
    s = settings_for(settings_env, project)
    with compose_project() as other:
        stranger = other.run(["true"])
        other.wait_status(stranger, "exited")
        refused = restart(s, stranger.name)
        assert isinstance(refused, Refused) and refused.notice
        assert "not part of compose project" in refused.reason
        assert other.status(stranger) == "exited"


def restart_approved(settings: Any, ref: str, approved: frozenset[str]) -> ActionResult:
    """As restart(), on an approval of ``approved``."""
    ctx = ActionContext(settings, get_logger(), approved=approved)
    resolved = resolve_container(ctx, ContainerParams(container=ref))
    return restart_container(dataclasses.replace(ctx, facts=resolved.facts), resolved.params)


def test_restart_plan_names_the_container_by_id_and_restarts_nothing(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """The plan's one item is the container by full ID, with name, short ID and state; the
    container stays exited and no restart state is written."""
    s = settings_for(settings_env, project)
    app = project.run(SERVE)
    app.stop(timeout=5)
    project.wait_status(app, "exited")
    started = project.started_at(app)
    plan = plan_restart(CheckContext(s, get_logger()), ContainerParams(container=app.name))
    (one,) = plan.items
    assert one.key == f"container:{app.id}"
    assert (one.detail["name"], one.detail["short_id"]) == (app.name, app.short_id)
    assert (one.detail["status"], one.detail["restarts_in_window"]) == ("exited", 0)
    assert project.status(app) == "exited" and project.started_at(app) == started
    assert not r.exists(state_key(app.name))


def test_an_approval_restarts_only_the_container_approved(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """Re-created under the same name since the approval, the container is another one
    and is refused; the approved container itself is restarted."""
    s = settings_for(settings_env, project)
    old = project.run(SERVE)
    old.stop(timeout=5)
    project.wait_status(old, "exited")
    plan = plan_restart(CheckContext(s, get_logger()), ContainerParams(container=old.name))
    old.remove()
    project.numbers -= 1  # the next replica takes the same name
    new = project.run(CRASH)
    project.wait_status(new, "exited")
    with pytest.raises(Refused, match="not the container approved"):
        restart_approved(s, new.name, plan.keys())
    assert project.status(new) == "exited"
    ok = restart_approved(s, new.name, frozenset({f"container:{new.id}"}))
    assert (ok.ok, ok.changed, ok.detail["id"]) == (True, True, new.id)
