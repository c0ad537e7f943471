"""`docker compose up --scale SERVICE=N` for a running project, through the Docker API.

The SDK has no compose: a service is the set of containers labelled with its project and
service. Scaling up clones an existing replica's configuration (image, command, env,
labels, network, mounts, limits, healthcheck) under the next container number; scaling
down stops and removes the newest replicas first. Only running replicas count: stopped
ones are left for restart_container (and its flap guard) to deal with.
"""

from __future__ import annotations

from typing import Any

from remediation.clients import docker as docker_client
from remediation.clients.docker import NUMBER_LABEL, compose_containers, container_number
from remediation.errors import RemediationError
from remediation.settings import Settings

STOP_TIMEOUT_SECONDS = 10
"""Grace between SIGTERM and SIGKILL when a replica is removed (compose's default)."""
MAX_REPLICAS = 256
"""Sanity bound; the scale target's own min/max are checked by the caller."""

# HostConfig fields that are per container or set by the engine, never copied to a clone.
_HOST_CONFIG_DROP = ("ContainerIDFile",)


def count_replicas(settings: Settings, project: str, service: str) -> int:
    """How many containers of the service are running."""
    dc = docker_client.client(settings)
    return len(compose_containers(dc, project, service, running_only=True))


def scale_service(settings: Settings, project: str, service: str, replicas: int) -> dict[str, Any]:
    """Make exactly `replicas` containers of the service run; report before/after and names."""
    if not 0 <= replicas <= MAX_REPLICAS:
        raise RemediationError(f"replicas must be 0..{MAX_REPLICAS}, not {replicas}")
    dc = docker_client.client(settings)
    every = compose_containers(dc, project, service)
    running = _newest_last([c for c in every if c.status == "running"])
    result: dict[str, Any] = {"project": project, "service": service, "before": len(running),
                              "created": [], "removed": []}  # fmt: skip
    if replicas > len(running):
        template = _template(project, service, running or _newest_last(every))
        taken = {c.name for c in every}
        number = max((container_number(c) for c in every), default=0)
        for _ in range(replicas - len(running)):
            number, name = _next_free(project, service, number, taken)
            result["created"].append(_clone(dc, template, name, number, service))
            taken.add(name)
    for extra in reversed(running[replicas:]):  # newest first
        extra.stop(timeout=STOP_TIMEOUT_SECONDS)
        extra.remove()
        result["removed"].append(extra.name)
    after = _newest_last(compose_containers(dc, project, service, running_only=True))
    result["after"] = len(after)
    result["replicas"] = [c.name for c in after]
    return result


def _newest_last(containers: list[Any]) -> list[Any]:
    return sorted(containers, key=lambda c: (container_number(c), c.attrs.get("Created", "")))


def _template(project: str, service: str, candidates: list[Any]) -> Any:
    if not candidates:
        raise RemediationError(
            f"compose service {project}/{service} has no container to clone from: start it "
            f"once with `docker compose -p {project} up -d {service}`"
        )
    return candidates[0]


def _next_free(project: str, service: str, number: int, taken: set[str]) -> tuple[int, str]:
    while True:
        number += 1
        name = f"{project}-{service}-{number}"
        if name not in taken:
            return number, name


def _clone(dc: Any, template: Any, name: str, number: int, service: str) -> str:
    """Create and start a replica configured like template; remove it again if it won't start."""
    config = clone_config(template.attrs, number, service)
    created = dc.api.create_container_from_config(config, name=name)
    container = dc.containers.get(created["Id"])
    try:
        _connect_other_networks(dc, template.attrs, container, service)
        container.start()
    except docker_client.ERRORS as exc:
        container.remove(force=True)
        raise RemediationError(f"replica {name} did not start: {exc}") from exc
    return name


def clone_config(attrs: dict[str, Any], number: int, service: str) -> dict[str, Any]:
    """The create body for a new replica, from `docker inspect` of an existing one."""
    config = {k: v for k, v in attrs["Config"].items() if k not in ("Hostname", "Domainname")}
    # the image ID, not the tag: a tag moved since the service started would run other code
    config["Image"] = attrs["Image"]
    config["Labels"] = {**(config.get("Labels") or {}), NUMBER_LABEL: str(number)}
    host = {k: v for k, v in attrs["HostConfig"].items() if k not in _HOST_CONFIG_DROP}
    host["PortBindings"] = _ephemeral_ports(host.get("PortBindings") or {})
    config["HostConfig"] = host
    primary = host.get("NetworkMode", "")
    networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
    if primary in networks and _user_defined(primary):
        config["NetworkingConfig"] = {"EndpointsConfig": {primary: {"Aliases": [service]}}}
    return config


def _ephemeral_ports(bindings: dict[str, Any]) -> dict[str, Any]:
    """Keep port bindings without a fixed host port: a fixed one can only be bound once."""
    kept = {}
    for port, binds in bindings.items():
        free = [b for b in binds or [] if not b.get("HostPort") or b.get("HostPort") == "0"]
        if free:
            kept[port] = free
    return kept


def _user_defined(network: str) -> bool:
    return network not in ("", "default", "bridge", "host", "none") and ":" not in network


def _connect_other_networks(dc: Any, attrs: dict[str, Any], container: Any, service: str) -> None:
    primary = attrs["HostConfig"].get("NetworkMode", "")
    for net in attrs.get("NetworkSettings", {}).get("Networks") or {}:
        if net != primary and _user_defined(net):
            dc.networks.get(net).connect(container, aliases=[service])
