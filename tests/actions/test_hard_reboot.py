"""recreate_service (runbook 000 Docker Management step 4, hard reboot) against a real Docker
engine: exactly the service's containers recreated from the newest one's configuration,
the give-up cleared, refused when off, outside the project, or asked to widen its scope."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from remediation import playbook
from remediation.actions.hard_reboot import (
    RecreateServiceParams,
    recreate_service,
    resolve_recreate,
)
from remediation.clients.docker import PROJECT_LABEL
from remediation.context import ActionContext
from remediation.errors import Deferred, Refused
from remediation.findings import ActionResult, Finding, Severity
from remediation.logging import get_logger
from remediation.restarts import state_key
from remediation.runner import Runner
from remediation.settings import DEFAULT_REQUIRE
from tests.support.base import wait_for
from tests.support.docker_compose import DOCKER_URL, IMAGE, ComposeProject, compose_project
from tests.support.runner import Recorder

SERVE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
# Fails at once while /stuck exists in its own writable layer: a stuck state that a restart
# keeps and a recreation (fresh writable layer) clears.
STUCK = ["sh", "-c", "[ -e /stuck ] && exit 1; trap 'exit 0' TERM; while true; do sleep 0.1; done"]
HEALTHY = {"test": ["CMD", "true"], "interval": 200_000_000, "retries": 1}


def settings_for(settings_env: Any, project: ComposeProject, **extra: str) -> Any:
    env = {
        "REMEDIATION_CONTAINERS__DOCKER_URL": DOCKER_URL,
        "REMEDIATION_CONTAINERS__PROJECT": project.name,
        "REMEDIATION_CONTAINERS__HARD_REBOOT": "true",
        "REMEDIATION_CONTAINERS__HARD_REBOOT_WAIT_SECONDS": "20",
        **extra,
    }
    return settings_env(**env)


def run_in(project: ComposeProject, service: str, command: Any, **kw: Any) -> Any:
    """A replica of another service of the same project."""
    mine, project.service = project.service, service
    try:
        return project.run(command, **kw)
    finally:
        project.service = mine


def make_stuck(project: ComposeProject, container: Any) -> None:
    """Write the marker into the container's own layer and stop it: it now exits at start."""
    project.wait_status(container, "running")
    assert container.exec_run(["sh", "-c", ": > /stuck"]).exit_code == 0
    container.kill()
    project.wait_status(container, "exited")
    container.start()
    project.wait_status(container, "exited")


def give_up(r: redis.Redis, *names: str) -> None:
    """What restart_container leaves behind when it gives up on a container."""
    for name in names:
        r.hset(state_key(name), mapping={"unmonitored_at": 1_700_000_000, "history": "[]"})


def hard_reboot(settings: Any, ref: str, **kw: Any) -> ActionResult | Refused | Deferred:
    """The resolve step, then the action, as the runner calls them (without the guards)."""
    ctx = ActionContext(settings, get_logger())
    try:
        resolved = resolve_recreate(ctx, RecreateServiceParams(container=ref, **kw))
        return recreate_service(dataclasses.replace(ctx, facts=resolved.facts), resolved.params)
    except (Refused, Deferred) as exc:
        return exc


def inspect(project: ComposeProject, name: str) -> dict[str, Any]:
    attrs: dict[str, Any] = project.dc.containers.get(name).attrs
    return attrs


def test_recreates_exactly_the_service_from_its_newest_configuration(
    settings_env: Any, r: redis.Redis, project: ComposeProject, tmp_path: Path
) -> None:
    """Both replicas of the stuck service are recreated under their names from the newest
    one's image, command, env, labels, network, bind mount and healthcheck; the other
    service is untouched; the give-up is cleared once they run and are healthy."""
    s = settings_for(settings_env, project)
    net = project.network()
    folder = str(tmp_path)
    (tmp_path / "seen").write_text("kept")
    common = {
        "network": net.name,
        "healthcheck": HEALTHY,
        "volumes": {folder: {"bind": "/data", "mode": "ro"}},
    }
    older = project.run(STUCK, environment={"GEN": "1"}, **common)
    newer = project.run(STUCK, environment={"GEN": "2", "KEEP": "yes"}, **common)
    other = run_in(project, "db", SERVE)
    make_stuck(project, older)
    give_up(r, older.name)
    before = {c.name: c.id for c in project.containers()}

    result = hard_reboot(s, older.id[:12])

    assert isinstance(result, ActionResult), result
    assert (result.ok, result.changed, result.detail["came_up"]) == (True, True, True)
    assert sorted(c["name"] for c in result.detail["created"]) == sorted([older.name, newer.name])
    after = {c.name: c.id for c in project.containers()}
    assert set(after) == set(before)
    assert after[other.name] == before[other.name] and project.status(other) == "running"
    for name in (older.name, newer.name):
        assert after[name] != before[name]
        attrs = inspect(project, name)
        assert attrs["State"]["Health"]["Status"] == "healthy"
        assert attrs["Config"]["Cmd"] == STUCK and attrs["Config"]["Image"] == IMAGE
        assert {"GEN=2", "KEEP=yes"} <= set(attrs["Config"]["Env"])
        assert attrs["Config"]["Healthcheck"]["Test"] == HEALTHY["test"]
        assert attrs["Config"]["Labels"][PROJECT_LABEL] == project.name
        assert net.name in attrs["NetworkSettings"]["Networks"]
        assert [(m["Source"], m["Destination"]) for m in attrs["Mounts"]] == [(folder, "/data")]
    assert (
        inspect(project, older.name)["Config"]["Labels"]["com.docker.compose.container-number"]
        == "1"
    )
    assert r.exists(state_key(older.name)) == 0
    assert [f.action for f in result.follow_up] == ["notify"]
    assert "hard reboot" in result.follow_up[0].params["text"]


def test_project_scope_recreates_every_service(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """With HARD_REBOOT_SCOPE=project, every service's containers are recreated; a call may
    narrow that back to the one service."""
    s = settings_for(settings_env, project, REMEDIATION_CONTAINERS__HARD_REBOOT_SCOPE="project")
    app = project.run(STUCK)
    db = run_in(project, "db", SERVE)
    make_stuck(project, app)

    narrowed = hard_reboot(s, app.name, scope="service")
    assert isinstance(narrowed, ActionResult), narrowed
    assert [c["name"] for c in narrowed.detail["created"]] == [app.name]
    assert project.dc.containers.get(db.name).id == db.id

    make_stuck(project, project.dc.containers.get(app.name))
    whole = hard_reboot(s, app.name)
    assert isinstance(whole, ActionResult), whole
    assert sorted(c["name"] for c in whole.detail["created"]) == sorted([app.name, db.name])
    assert project.dc.containers.get(db.name).id != db.id


def test_refused_when_off_and_the_playbook_does_not_ask(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """Off by default: a by-hand call is refused naming the setting (no notice), nothing is
    recreated, and a container_given_up finding asks for no hard reboot."""
    s = settings_env(
        REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
        REMEDIATION_CONTAINERS__PROJECT=project.name,
    )
    assert s.containers.hard_reboot is False
    app = project.run(STUCK)
    make_stuck(project, app)

    refused = hard_reboot(s, app.name)

    assert isinstance(refused, Refused) and not refused.notice
    assert "REMEDIATION_CONTAINERS__HARD_REBOOT" in refused.reason
    assert project.dc.containers.get(app.name).id == app.id
    finding = Finding(
        check="docker_containers",
        target="docker",
        subject=app.name,
        kind="container_given_up",
        severity=Severity.HIGH,
    )
    assert [rule.action for rule in playbook.rules_for(finding)] == []
    settings_for(settings_env, project)
    assert [rule.action for rule in playbook.rules_for(finding)] == ["recreate_service"]


def test_hostile_and_foreign_calls_are_refused_before_anything_is_touched(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """Another project, a container compose does not manage, a service the container is not
    in, a wider scope than configured, a running healthy container: refused; bad kwargs fail
    validation. Nothing is recreated."""
    s = settings_for(settings_env, project)
    app = project.run(STUCK)
    make_stuck(project, app)
    fine = run_in(project, "db", SERVE)
    loose = project.dc.containers.create(
        IMAGE, ["true"], name=f"{project.name}-loose", labels={PROJECT_LABEL: project.name}
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"container": loose.name}, "not a container of a compose service"),
        ({"container": app.name, "service": "db"}, f"belongs to service {project.service}"),
        ({"container": app.name, "scope": "project"}, "HARD_REBOOT_SCOPE is service"),
        ({"container": fine.name}, "is running: nothing to reboot"),
        ({"container": "rem-no-such-container"}, "no container named"),
    ]
    with compose_project() as other:
        stranger = other.run(["sh", "-c", "exit 1"])
        other.wait_status(stranger, "exited")
        cases.append(({"container": stranger.name}, "not part of compose project"))
        for kwargs, reason in cases:
            extra = {k: v for k, v in kwargs.items() if k != "container"}
            refused = hard_reboot(s, kwargs["container"], **extra)
            assert isinstance(refused, Refused) and reason in refused.reason, (kwargs, refused)
        assert other.dc.containers.get(stranger.name).id == stranger.id
    for bad in (
        {"container": "../etc"},
        {"container": app.name, "project": "other"},
        {"container": "x" * 200},
        {"container": app.name, "scope": "host"},
    ):
        with pytest.raises(ValidationError):
            RecreateServiceParams.model_validate(bad)
    assert {c.name: c.id for c in project.containers()}[app.name] == app.id


def test_through_the_runner_once_per_window(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """Guarded: the first call recreates, a second one inside the cooldown (stuck again) is
    suppressed by the cooldown and recreates nothing; the resource is the service."""
    s = settings_for(settings_env, project)
    app = project.run(STUCK)
    make_stuck(project, app)
    runner = Runner(s, Recorder())

    first = runner.run_action("recreate_service", {"container": app.id}, task_id="reboot-1")
    assert first.outcome == "succeeded", first
    new = project.dc.containers.get(app.name)
    assert new.id != app.id
    make_stuck(project, new)
    second = runner.run_action("recreate_service", {"container": app.name}, task_id="reboot-2")

    assert second.outcome == "suppressed" and "cooling down" in (second.reason or ""), second
    assert project.dc.containers.get(app.name).id == new.id
    rows = runner.store.query(
        "SELECT resource FROM guard_decisions WHERE task_id IN ('reboot-1', 'reboot-2')"
    )
    assert {row["resource"] for row in rows} == {f"docker/service/{project.service}"}
    assert "recreate_service" in DEFAULT_REQUIRE  # by default it waits for a human


def test_a_service_that_does_not_come_up_keeps_its_give_up(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """A recreated container that still fails within the wait: the reboot is reported as not
    come up, and restart_container's give-up stays (the check keeps reporting it)."""
    s = settings_for(settings_env, project, REMEDIATION_CONTAINERS__HARD_REBOOT_WAIT_SECONDS="2")
    app = project.run(["sh", "-c", "exit 1"])
    project.wait_status(app, "exited")
    give_up(r, app.name)

    result = hard_reboot(s, app.name)

    assert isinstance(result, ActionResult) and result.detail["came_up"] is False, result
    assert "not all running" in result.summary
    assert r.hexists(state_key(app.name), "unmonitored_at")
    wait_for(lambda: project.dc.containers.get(app.name).status == "exited", 15, 0.1, "exit")
