"""Docker engine clients, one per URL per process, and compose services found by label."""

from __future__ import annotations

import os
import re
from typing import Any

import docker
import requests
from docker.models.containers import Container

from remediation.errors import RemediationError
from remediation.settings import Settings

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"
CONTAINER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
"""A container name as the engine allows it (and as a kwarg or an event may name one)."""
DEFAULT_TIMEOUT = 30.0
"""Seconds an API call may take; stop timeouts are added on top by the SDK."""

# What an unreachable or failing engine raises: SDK errors, or the transport underneath.
ERRORS: tuple[type[BaseException], ...] = (docker.errors.DockerException, requests.RequestException)

_CLIENTS: dict[tuple[int, str], docker.DockerClient] = {}


class DockerUnavailable(RemediationError):
    """The Docker engine did not answer (or refused) at the configured URL."""


FAILURES: tuple[type[BaseException], ...] = (*ERRORS, DockerUnavailable)
"""Everything a call through this module raises when the engine is down or refuses."""


def client(settings: Settings, *, timeout: float = DEFAULT_TIMEOUT) -> docker.DockerClient:
    """A client for REMEDIATION_CONTAINERS__DOCKER_URL, created on first use in this process.

    The SDK asks the engine for its API version when the client is made, so an engine
    that does not answer raises DockerUnavailable here (and nothing is cached)."""
    url = settings.containers.docker_url
    key = (os.getpid(), url)
    if key not in _CLIENTS:
        try:
            _CLIENTS[key] = docker.DockerClient(base_url=url, timeout=int(timeout))
        except ERRORS as exc:
            raise DockerUnavailable(f"Docker engine at {url} does not answer: {exc}") from exc
    return _CLIENTS[key]


def reset() -> None:
    """Forget clients (after fork, and between tests)."""
    for c in _CLIENTS.values():
        c.close()
    _CLIENTS.clear()


def compose_containers(
    dc: docker.DockerClient,
    project: str,
    service: str | None = None,
    *,
    running_only: bool = False,
    name: str | None = None,
) -> list[Container]:
    """Containers of a compose project (or one of its services), in every state by default;
    with ``name``, only the container of that exact name (the engine inspects each container
    listed, so one asked for by name costs one inspection, not one per container).

    One-off containers (`docker compose run`) are not part of a service and are left out."""
    labels = [f"{PROJECT_LABEL}={project}"]
    if service is not None:
        labels.append(f"{SERVICE_LABEL}={service}")
    filters: dict[str, Any] = {"label": labels}
    if name is not None:
        filters["name"] = f"^/{re.escape(name)}$"  # the engine's name filter is a regex
    found: list[Container] = dc.containers.list(all=not running_only, filters=filters, sparse=False)
    return [
        c
        for c in found
        if c.labels.get(ONEOFF_LABEL, "False") != "True" and (name is None or c.name == name)
    ]


def container_number(container: Container) -> int:
    """The replica number compose gave the container (0 when the label is missing or bad)."""
    try:
        return int(container.labels.get(NUMBER_LABEL, "0"))
    except ValueError:
        return 0


def state(container: Container) -> dict[str, Any]:
    """The container's State block as last loaded (Status, ExitCode, Health ...)."""
    value: dict[str, Any] = container.attrs.get("State", {})
    return value
