"""docker_containers against a real Docker engine: down, unhealthy, overloaded, unreachable."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from remediation.checks.containers import DockerContainersParams, docker_containers
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.logging import get_logger
from remediation.restarts import state_key
from tests.support.base import free_port, wait_for
from tests.support.docker_compose import ComposeProject

SERVE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
BUSY = ["sh", "-c", "trap 'exit 0' TERM; while true; do :; done"]


def run_check(settings: Any) -> dict[tuple[str, str], Finding]:
    findings = docker_containers(CheckContext(settings, get_logger()), DockerContainersParams())
    return {(f.kind, f.subject): f for f in findings}


def test_exited_containers_are_down_with_their_exit_code(
    settings_env: Any, project: ComposeProject
) -> None:
    """A crash (exit 3) is container_down high, a clean exit 0 a warning; a running one is fine."""
    s = settings_env(REMEDIATION_CONTAINERS__PROJECT=project.name)
    fine = project.run(SERVE)
    crashed = project.run(["sh", "-c", "exit 3"])
    finished = project.run(["true"])
    project.wait_status(crashed, "exited")
    project.wait_status(finished, "exited")

    found = run_check(s)

    assert set(found) == {("container_down", crashed.name), ("container_down", finished.name)}
    crash = found["container_down", crashed.name]
    assert (crash.severity, crash.observed, crash.evidence["exit_code"]) == (
        Severity.HIGH,
        "exited",
        3,
    )
    assert "exit code 3" in crash.summary
    assert found["container_down", finished.name].severity == Severity.WARNING
    assert all(subject != fine.name for _, subject in found)


def test_failing_healthcheck_is_unhealthy(settings_env: Any, project: ComposeProject) -> None:
    """A running container whose HEALTHCHECK fails is container_unhealthy (high), not down."""
    s = settings_env(REMEDIATION_CONTAINERS__PROJECT=project.name)
    sick = project.run(
        SERVE,
        healthcheck={
            "test": ["CMD", "false"],
            "interval": 500_000_000,
            "timeout": 500_000_000,
            "retries": 1,
        },
    )
    wait_for(
        lambda: project.status(sick) and sick.attrs["State"]["Health"]["Status"] == "unhealthy",
        15,
        0.1,
        "the healthcheck to fail",
    )
    found = run_check(s)
    assert set(found) == {("container_unhealthy", sick.name)}
    assert found["container_unhealthy", sick.name].severity == Severity.HIGH
    assert found["container_unhealthy", sick.name].evidence["last_exit_code"] == 1


def test_cpu_and_memory_past_thresholds_are_overloaded(
    settings_env: Any, project: ComposeProject
) -> None:
    """A busy loop above CPU_HIGH_PERCENT and memory above MEMORY_HIGH_PERCENT: high; idle: none."""
    s = settings_env(
        REMEDIATION_CONTAINERS__PROJECT=project.name,
        REMEDIATION_CONTAINERS__CPU_HIGH_PERCENT="20",
        REMEDIATION_CONTAINERS__MEMORY_HIGH_PERCENT="0.01",
    )
    busy = project.run(BUSY, mem_limit="32m")
    found = run_check(s)
    hot = found["container_overloaded", busy.name]
    assert hot.severity == Severity.HIGH
    assert hot.evidence["over"] == ["cpu", "memory"]
    assert hot.evidence["cpu_percent"] > 20
    assert hot.observed == hot.evidence["cpu_percent"]

    calm = settings_env(
        REMEDIATION_CONTAINERS__CPU_HIGH_PERCENT="90",
        REMEDIATION_CONTAINERS__MEMORY_HIGH_PERCENT="90",
    )
    busy.stop(timeout=5)
    project.run(SERVE, mem_limit="32m")
    assert [k for k in run_check(calm) if k[0] == "container_overloaded"] == []


def test_unreachable_engine_is_a_finding_not_a_crash(settings_env: Any) -> None:
    """Nothing listening at the docker URL gives one docker_unreachable (high) naming the URL."""
    url = f"tcp://127.0.0.1:{free_port()}"
    s = settings_env(REMEDIATION_CONTAINERS__DOCKER_URL=url, REMEDIATION_CONTAINERS__PROJECT="app")
    found = run_check(s)
    assert list(found) == [("docker_unreachable", "")]
    assert found["docker_unreachable", ""].severity == Severity.HIGH
    assert url in found["docker_unreachable", ""].summary


def test_no_project_is_one_info_finding(settings_env: Any) -> None:
    """Without a project to watch the check says how to set one, and reads nothing."""
    s = settings_env(REMEDIATION_CONTAINERS__DOCKER_URL=f"tcp://127.0.0.1:{free_port()}")
    found = run_check(s)
    assert list(found) == [("docker_containers_unconfigured", "")]
    assert found["docker_containers_unconfigured", ""].severity == Severity.INFO


def test_project_kwarg_is_rejected(settings_env: Any, project: ComposeProject) -> None:
    """A call cannot name another compose project: only REMEDIATION_CONTAINERS__PROJECT is
    watched (a kwarg may narrow what configuration allows, never widen it)."""
    settings_env(REMEDIATION_CONTAINERS__PROJECT="some-other-project")
    with pytest.raises(ValidationError, match="project"):
        DockerContainersParams.model_validate({"project": project.name})


def test_a_container_restarts_gave_up_on_is_given_up_not_down(
    settings_env: Any, r: Any, project: ComposeProject
) -> None:
    """A crashed container with restart_container's give-up in its state is one
    container_given_up (high) and no container_down; without it, plain container_down."""
    s = settings_env(REMEDIATION_CONTAINERS__PROJECT=project.name)
    left = project.run(["sh", "-c", "exit 3"])
    other = project.run(["sh", "-c", "exit 4"])
    project.wait_status(left, "exited")
    project.wait_status(other, "exited")
    r.hset(state_key(left.name), mapping={"unmonitored_at": 1_700_000_000, "history": "[]"})

    found = run_check(s)

    assert set(found) == {("container_given_up", left.name), ("container_down", other.name)}
    gave_up = found["container_given_up", left.name]
    assert (gave_up.severity, gave_up.observed) == (Severity.HIGH, "exited")
    assert gave_up.evidence["finding"] == "container_down"
    assert gave_up.evidence["given_up_at"].startswith("2023-11-14T22:13:20")
