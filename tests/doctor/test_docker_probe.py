"""The Docker probe: a missing and an unreadable socket, and the real engine (dockerd)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from remediation.doctor import docker as docker_probe
from remediation.settings import Settings
from tests.support.docker_compose import DOCKER_URL, ComposeProject
from tests.support.servers import in_child_as


def _settings(url: str, project: str | None = "shop", **containers: object) -> Settings:
    return Settings(containers={"docker_url": url, "project": project, **containers})


def test_unused_docker_is_one_ok_row() -> None:
    """No project and no compose scale target: Docker is not used, one ok row (not a fail)."""
    rows = docker_probe.probe(_settings("unix:///nonexistent/docker.sock", project=None))
    assert [(r.status, r.what) for r in rows] == [("ok", "configured")]


def test_missing_socket_fails_with_fix() -> None:
    """A socket path that does not exist is one fail row naming the variable to correct and
    the actions that need it (hard reboot on adds recreate_service)."""
    rows = docker_probe.probe(_settings("unix:///nonexistent/docker.sock", hard_reboot=True))
    assert [(r.status, r.what) for r in rows] == [
        ("fail", "socket /nonexistent/docker.sock readable and writable")
    ]
    assert "REMEDIATION_CONTAINERS__DOCKER_URL" in rows[0].fix
    assert rows[0].needed_by == (
        "recreate_service",
        "reset_container_restarts",
        "restart_container",
    )


def test_unreadable_socket_fails_for_a_non_root_user(root_socket: Path) -> None:
    """Run as nobody (root ignores modes), a 0600 root socket is a fail row telling how to
    get access; compose scale targets bring scale_workers into needed_by."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the probe as another user")
    settings = Settings(
        containers={"docker_url": f"unix://{root_socket}"},
        workers={
            "scale_targets": [
                {"name": "w", "backend": "compose", "project": "shop", "service": "worker"}
            ]
        },
    )
    rows = in_child_as("nobody", lambda: [r.as_dict() for r in docker_probe.probe(settings)])
    assert len(rows) == 1 and rows[0]["status"] == "fail", rows
    assert rows[0]["detail"] == "user nobody may not read and write it (mode 600)"
    assert "usermod -aG docker nobody" in rows[0]["fix"]
    assert rows[0]["needed_by"] == ["scale_workers"]


def test_real_engine_ok_and_empty_project_fails(project: ComposeProject) -> None:
    """Against the real engine with a running replica of the project: socket, engine and
    project ok; a project with no containers is a fail row naming the label and project."""
    project.run("sleep 60")
    rows = docker_probe.probe(_settings(DOCKER_URL, project=project.name))
    assert [r.status for r in rows] == ["ok", "ok", "ok"], rows
    assert rows[1].detail.startswith("Docker ")
    assert rows[2].detail == "1 container(s), 1 running"
    empty = docker_probe.probe(_settings(DOCKER_URL, project=f"{project.name}-none"))[-1]
    assert empty.status == "fail" and empty.detail == "0 containers found"
    assert f"com.docker.compose.project={project.name}-none" in empty.fix
