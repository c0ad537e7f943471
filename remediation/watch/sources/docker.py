"""Docker events of the configured compose project -> docker_containers for that container.

Runbook 000 "Docker Management: containers unresponsive or crashed: restart service" and 001
"System Health: check container health": ``die``, ``oom`` and ``health_status: unhealthy`` of
a container labelled with REMEDIATION_CONTAINERS__PROJECT become the container check,
narrowed to that container (its state only: no stats sample), which finds it down or
unhealthy and leads to restart_container, as a sweep would. The stream is filtered by the
project's label on the engine, and again here.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker

from remediation.clients.docker import (
    CONTAINER_NAME,
    DEFAULT_TIMEOUT,
    PROJECT_LABEL,
    SERVICE_LABEL,
)
from remediation.settings import Settings
from remediation.watch.events import CATCH_UP, Event

CHECK = "docker_containers"
ACTIONS = ("die", "oom", "health_status: unhealthy")
_NAME = re.compile(CONTAINER_NAME)


class DockerSource:
    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.url = settings.containers.docker_url
        self.project = settings.containers.project
        self._client: docker.DockerClient | None = None
        self._stream: Any = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        self.close()
        client = docker.DockerClient(base_url=self.url, timeout=int(DEFAULT_TIMEOUT))
        stream = client.events(
            decode=True,
            filters={"type": "container", "label": [f"{PROJECT_LABEL}={self.project}"]},
        )
        with self._lock:
            self._client, self._stream = client, stream

    def catch_up(self) -> list[Event]:
        return [Event(self.name, CATCH_UP, CHECK, "docker/*", {}, time.time())]

    def events(self) -> Iterator[Event]:
        stream = self._stream
        if stream is None:
            return
        for raw in stream:
            ev = self.parse(raw)
            if ev is not None:
                yield ev

    def parse(self, raw: Any) -> Event | None:
        """The event for a watched action of a container of the project, else None."""
        if not isinstance(raw, dict) or raw.get("Type") != "container":
            return None
        action = raw.get("Action")
        if action not in ACTIONS:
            return None
        actor = raw.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        name = attrs.get("name")
        if attrs.get(PROJECT_LABEL) != self.project or not isinstance(name, str):
            return None
        if not _NAME.match(name):
            return None
        nano = raw.get("timeNano")
        at = nano / 1e9 if isinstance(nano, int) else float(raw.get("time") or 0)
        return Event(
            self.name,
            action,
            CHECK,
            f"docker/{name}",
            {"container": name},
            at,
            {
                "id": str(actor.get("ID", ""))[:12],
                "service": attrs.get(SERVICE_LABEL),
                "exit_code": attrs.get("exitCode"),
            },
        )

    def close(self) -> None:
        with self._lock:
            stream, client = self._stream, self._client
            self._stream = self._client = None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: S110 (already gone)
                pass
        if client is not None:
            client.close()
