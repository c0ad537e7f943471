"""compose "scale" through the Docker API, against a real engine (runbook 001 overload)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from remediation import compose
from remediation.clients.docker import NUMBER_LABEL
from remediation.compose import count_replicas, scale_service
from remediation.errors import RemediationError
from tests.support.docker_compose import DOCKER_URL, ComposeProject, compose_project

# exits at once on SIGTERM, so stopping a replica does not wait out the stop timeout
SERVE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]


@pytest.fixture
def settings(settings_env: Any) -> Any:
    return settings_env(REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL)


def test_scale_up_clones_and_down_removes_newest_first(
    settings: Any, project: ComposeProject
) -> None:
    """1 -> 3 clones the replica (image, command, env, labels, next numbers); 3 -> 1 removes 3 then 2."""
    first = project.run(SERVE, environment={"APP_MODE": "worker"})
    assert count_replicas(settings, project.name, "app") == 1

    up = scale_service(settings, project.name, "app", 3)

    names = [f"{project.name}-app-{n}" for n in (1, 2, 3)]
    assert (up["before"], up["after"]) == (1, 3)
    assert up["created"] == names[1:]
    assert up["replicas"] == names
    assert count_replicas(settings, project.name, "app") == 3
    clones = [project.dc.containers.get(n) for n in names[1:]]
    assert [c.labels[NUMBER_LABEL] for c in clones] == ["2", "3"]
    for clone in clones:
        assert clone.status == "running"
        assert clone.attrs["Config"]["Cmd"] == first.attrs["Config"]["Cmd"]
        assert "APP_MODE=worker" in clone.attrs["Config"]["Env"]
        assert clone.attrs["Image"] == first.attrs["Image"]
        assert clone.attrs["HostConfig"]["NetworkMode"] == first.attrs["HostConfig"]["NetworkMode"]

    down = scale_service(settings, project.name, "app", 1)

    assert (down["before"], down["after"]) == (3, 1)
    assert down["removed"] == [names[2], names[1]]
    assert down["replicas"] == [names[0]]
    assert [c.name for c in project.containers()] == [names[0]]


def test_clone_joins_the_project_network_with_the_service_alias(
    settings: Any, project: ComposeProject
) -> None:
    """On a compose network the new replica joins it under the service name, like compose does."""
    net = project.network()
    project.run(SERVE, network=net.name)
    result = scale_service(settings, project.name, "app", 2)
    clone = project.dc.containers.get(result["created"][0])
    endpoint = clone.attrs["NetworkSettings"]["Networks"][net.name]
    assert "app" in endpoint["Aliases"]
    assert clone.attrs["HostConfig"]["NetworkMode"] == net.name


def test_scale_to_the_current_count_changes_nothing(settings: Any, project: ComposeProject) -> None:
    """Asking for the replicas that already run creates and removes nothing."""
    project.run(SERVE)
    project.run(SERVE)
    result = scale_service(settings, project.name, "app", 2)
    assert (result["before"], result["after"], result["created"], result["removed"]) == (
        2,
        2,
        [],
        [],
    )


def test_stopped_replicas_do_not_count_and_are_left_alone(
    settings: Any, project: ComposeProject
) -> None:
    """A stopped replica is not running capacity: scaling to 2 adds replica 3 and keeps 2 as it is."""
    project.run(SERVE)
    stopped = project.run(["sh", "-c", "exit 1"])
    project.wait_status(stopped, "exited")
    result = scale_service(settings, project.name, "app", 2)
    assert result["created"] == [f"{project.name}-app-3"]
    assert result["after"] == 2
    assert project.status(stopped) == "exited"


def test_no_container_to_clone_from_is_a_clear_error(
    settings: Any, project: ComposeProject
) -> None:
    """A service without any container cannot be scaled up; the error says how to start it."""
    with pytest.raises(RemediationError, match="no container to clone from"):
        scale_service(settings, project.name, "app", 2)
    assert project.containers() == []


def test_scale_workers_compose_backend_bounds_and_window(
    settings_env: Any, project: ComposeProject
) -> None:
    """scale_workers on a compose service: 1 -> 3 (max), refused past it, down only after the window."""
    import json
    import time

    from remediation.actions.celery_workers import ScaleWorkersParams, scale_workers
    from remediation.context import ActionContext
    from remediation.errors import Deferred
    from remediation.logging import get_logger

    target = {
        "name": "web",
        "backend": "compose",
        "project": project.name,
        "service": "app",
        "queues": ["web-jobs"],
        "min": 1,
        "max": 3,
        "step": 2,
    }
    s = settings_env(
        REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
        REMEDIATION_WORKERS__SCALE_TARGETS=json.dumps([target]),
        REMEDIATION_WORKERS__SCALE_DOWN_STABILIZATION_SECONDS="2",
    )
    project.run(SERVE)

    def scale(direction: str) -> Any:
        ctx = ActionContext(s, get_logger())
        return scale_workers(ctx, ScaleWorkersParams(target="web", direction=direction))

    def replicas() -> int:
        return count_replicas(s, project.name, "app")

    up = scale("up")
    assert (up.ok, up.changed, replicas()) == (True, True, 3)
    at_max = scale("up")
    assert (at_max.ok, at_max.changed, replicas()) == (False, False, 3)  # escalates, never past
    with pytest.raises(Deferred, match="held"):  # inside the window: deferred, nothing moves
        scale("down")
    assert replicas() == 3
    time.sleep(2.2)
    down = scale("down")
    assert (down.ok, down.changed, replicas()) == (True, True, 1)
    at_min = scale("down")
    assert (at_min.changed, replicas()) == (False, 1)


def test_recreate_puts_the_old_containers_back_when_a_new_one_will_not_start(
    settings_env: Any,
) -> None:
    """The host port the service publishes is taken while it is down: the new container
    cannot start, so it is removed and the old container gets its name back, same ID, as
    it was (compose's own order: rename aside, create, remove the old only at the end)."""
    with compose_project() as project, socket.socket() as taken:
        if project.network_mode == "none":
            pytest.skip("publishing a port needs bridge networking")
        s = settings_env(REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.close()  # free for the old container's creation; taken again below
        old = project.run(["sh", "-c", "exit 1"], ports={"80/tcp": ("127.0.0.1", port)})
        project.wait_status(old, "exited")
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(RemediationError, match="old containers put back"):
                compose.recreate(s, project.name, "app")
        (back,) = project.containers()
        assert (back.id, back.name, back.status) == (old.id, old.name, "exited")
