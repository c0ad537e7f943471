"""restart_container against a real Docker engine: restart, back-off, flap guard, reset."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from remediation.actions.containers import (
    ContainerParams,
    ResetRestartsParams,
    reset_container_restarts,
    restart_container,
    state_key,
)
from remediation.context import ActionContext
from remediation.findings import ActionResult
from remediation.logging import get_logger
from remediation.testing import wait_for
from tests.docker_support import DOCKER_URL, ComposeProject, compose_project

SERVE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
CRASH = ["sh", "-c", "sleep 0.2; exit 1"]


@pytest.fixture
def project() -> Iterator[ComposeProject]:
    with compose_project() as p:
        yield p


def settings_for(settings_env: Any, project: ComposeProject, **extra: str) -> Any:
    return settings_env(REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
                        REMEDIATION_CONTAINERS__PROJECT=project.name, **extra)  # fmt: skip


def restart(settings: Any, name: str) -> ActionResult:
    return restart_container(ActionContext(settings, get_logger()), ContainerParams(container=name))


def test_exited_container_is_restarted_and_running_one_left_alone(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """An exited container runs again after the action; a second call finds it running."""
    s = settings_for(settings_env, project)
    app = project.run(SERVE)
    app.stop(timeout=5)
    project.wait_status(app, "exited")

    result = restart(s, app.name)

    assert (result.ok, result.changed) == (True, True)
    assert project.status(app) == "running"
    assert result.detail["restarts_in_window"] == 1
    again = restart(s, app.name)
    assert (again.ok, again.changed, again.summary) == (True, False, f"{app.name} is running")


def test_crash_loop_backs_off_then_is_left_alone_and_escalated_once(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """Restarts wait 1, 2, 4, 4 s (refused inside); the 5th failure in the window escalates once."""
    s = settings_for(
        settings_env, project,
        REMEDIATION_CONTAINERS__RESTART_BACKOFF_BASE_SECONDS="1",
        REMEDIATION_CONTAINERS__RESTART_BACKOFF_MAX_SECONDS="4",
        REMEDIATION_CONTAINERS__FLAP_MAX_RESTARTS="5",
        REMEDIATION_CONTAINERS__FLAP_WINDOW_SECONDS="120",
    )  # fmt: skip
    app = project.run(CRASH)
    backoffs, restarted_at = [], []
    for _ in range(5):
        project.wait_status(app, "exited")
        restarted_at.append(time.monotonic())
        result = restart(s, app.name)
        assert (result.ok, result.changed) == (True, True), result.summary
        backoffs.append(result.detail["backoff_seconds"])
        if len(backoffs) < 5:
            project.wait_status(app, "exited")
            refused = restart(s, app.name)
            assert (refused.ok, refused.changed) == (True, False)
            assert "backing off" in refused.summary
            assert project.status(app) == "exited"
            time.sleep(refused.detail["retry_in_seconds"] + 0.05)
    assert backoffs == [1, 2, 4, 4, 4]
    gaps = [b - a for a, b in itertools.pairwise(restarted_at)]
    assert all(
        wait - 0.1 <= gap < wait + 1 for wait, gap in zip([1, 2, 4, 4], gaps, strict=True)
    ), gaps

    project.wait_status(app, "exited")
    escalated = restart(s, app.name)
    assert (escalated.ok, escalated.changed) == (False, False)
    assert "left alone" in escalated.summary
    assert r.hget(state_key(app.name), "unmonitored_at") is not None
    assert r.ttl(state_key(app.name)) == -1  # kept until an operator clears it
    for _ in range(2):
        quiet = restart(s, app.name)
        assert (quiet.ok, quiet.changed) == (True, False)
        assert "left alone, escalated at" in quiet.summary
    assert project.status(app) == "exited"


def test_reset_lets_the_worker_restart_an_abandoned_container(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """After reset_container_restarts the given-up container is restarted again."""
    s = settings_for(settings_env, project, REMEDIATION_CONTAINERS__FLAP_MAX_RESTARTS="1")
    app = project.run(CRASH)
    project.wait_status(app, "exited")
    assert restart(s, app.name).changed
    project.wait_status(app, "exited")
    assert restart(s, app.name).ok is False

    cleared = reset_container_restarts(
        ActionContext(s, get_logger()), ResetRestartsParams(container=app.name)
    )

    assert cleared.changed
    assert r.exists(state_key(app.name)) == 0
    again = restart(s, app.name)
    assert (again.ok, again.changed, again.detail["restarts_in_window"]) == (True, True, 1)


def test_unhealthy_running_container_is_restarted(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """A running container failing its healthcheck is restarted too (container_unhealthy)."""
    s = settings_for(settings_env, project)
    sick = project.run(SERVE, healthcheck={"test": ["CMD", "false"], "interval": 200_000_000,
                                           "retries": 1})  # fmt: skip
    wait_for(lambda: project.status(sick) and sick.attrs["State"]["Health"]["Status"] == "unhealthy",
             15, 0.1, "the healthcheck to fail")  # fmt: skip
    started = sick.attrs["State"]["StartedAt"]
    result = restart(s, sick.name)
    assert (result.ok, result.changed, result.detail["health"]) == (True, True, "unhealthy")
    assert project.status(sick) == "running"
    assert sick.attrs["State"]["StartedAt"] != started


def test_containers_outside_the_project_are_not_touched(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """A container of another project is refused (ok=False) and stays exited."""
    s = settings_for(settings_env, project)
    with compose_project() as other:
        stranger = other.run(["true"])
        other.wait_status(stranger, "exited")
        result = restart(s, stranger.name)
        assert (result.ok, result.changed) == (False, False)
        assert "not part of compose project" in result.summary
        assert other.status(stranger) == "exited"
