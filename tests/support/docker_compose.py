"""A real Docker engine for the container tests, and throwaway compose projects on it.

scripts/ensure_docker.sh starts dockerd if none answers and imports the busybox test
image (images cannot be pulled here). Locally a missing engine skips; under CI it fails.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import docker

from remediation.clients.docker import NUMBER_LABEL, PROJECT_LABEL, SERVICE_LABEL
from tests.support.base import ROOT, wait_for
from tests.support.env import missing

IMAGE = "remediation-test/busybox:latest"
DOCKER_URL = "unix:///var/run/docker.sock"


@functools.cache
def _engine() -> tuple[Any, str]:
    """(client, "") when the engine answers after ensure_docker.sh, else (None, why not)."""
    try:
        done = subprocess.run(
            [str(ROOT / "scripts" / "ensure_docker.sh"), tempfile.gettempdir()],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"scripts/ensure_docker.sh: {exc}"
    if done.returncode != 0:
        return None, f"Docker engine ({done.stderr.strip()[-500:]})"
    try:
        dc = docker.DockerClient(base_url=DOCKER_URL, timeout=30)
        dc.images.get(IMAGE)
    except docker.errors.DockerException as exc:
        return None, f"Docker engine at {DOCKER_URL} ({exc})"
    return dc, ""


def docker_engine() -> Any:
    """A client on the real engine; skips locally (fails in CI) when there is none."""
    dc, why = _engine()
    if dc is None:
        missing(why)
    return dc


@dataclass
class ComposeProject:
    """Containers labelled as service "app" of a random compose project, removed at the end."""

    dc: Any
    name: str = field(default_factory=lambda: f"rem-test-{uuid.uuid4().hex[:8]}")
    service: str = "app"
    numbers: int = 0
    networks: list[Any] = field(default_factory=list)

    @property
    def network_mode(self) -> str:
        """Bridge networking when the engine has it (dockerd --bridge=none has not)."""
        return "bridge" if self.dc.networks.list(names=["bridge"]) else "none"

    def run(self, command: str | list[str], *, start: bool = True, **kw: Any) -> Any:
        """Create (and start) the service's next replica running command under busybox."""
        self.numbers += 1
        labels = {
            PROJECT_LABEL: self.name,
            SERVICE_LABEL: self.service,
            NUMBER_LABEL: str(self.numbers),
            "com.docker.compose.oneoff": "False",
        }
        kw.setdefault("network_mode", self.network_mode)
        container = self.dc.containers.create(
            IMAGE, command, name=f"{self.name}-{self.service}-{self.numbers}", labels=labels, **kw
        )
        if start:
            container.start()
        return container

    def containers(self) -> list[Any]:
        return list(
            self.dc.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={self.name}"})
        )

    def status(self, container: Any) -> str:
        container.reload()
        return str(container.status)

    def started_at(self, container: Any) -> str:
        """When the container last started (docker inspect State.StartedAt)."""
        container.reload()
        return str(container.attrs["State"]["StartedAt"])

    def wait_status(self, container: Any, status: str, timeout: float = 15) -> None:
        wait_for(
            lambda: self.status(container) == status,
            timeout,
            0.05,
            f"{container.name} to be {status}",
        )

    def network(self) -> Any:
        """The project's own network, as compose makes it (`<project>_default`)."""
        if self.network_mode == "none":
            missing("bridge networking (dockerd runs with --bridge=none)")
        net = self.dc.networks.create(f"{self.name}_default", labels={PROJECT_LABEL: self.name})
        self.networks.append(net)
        return net

    def cleanup(self) -> None:
        for container in self.containers():
            container.remove(force=True)
        for net in self.networks:
            net.remove()


@contextmanager
def compose_project() -> Iterator[ComposeProject]:
    """A fresh project on the real engine, every container of it removed afterwards."""
    project = ComposeProject(docker_engine())
    try:
        yield project
    finally:
        project.cleanup()
