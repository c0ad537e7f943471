"""`docker compose up --scale SERVICE=N` and `docker compose down && up -d` for a running
project, through the Docker API.

The SDK has no compose: a service is the set of containers labelled with its project and
service. Scaling up clones an existing replica's configuration (image, command, env,
labels, network, mounts, limits, healthcheck) under the next container number; scaling
down stops and removes the newest replicas first. Only running replicas count: stopped
ones are left for restart_container (and its flap guard) to deal with. Recreating (the
hard reboot) stops and removes every container of a service and creates each again under
its own name and number, from the newest one's configuration, with a fresh writable layer;
volumes and images are never removed.
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
_RECREATE_ERRORS: tuple[type[BaseException], ...] = (RemediationError, *docker_client.ERRORS)
MAX_RECREATE = 32
"""Containers one hard reboot may recreate (a service's replicas, or a whole project);
more is refused: `docker compose down && up -d` by hand is then the operator's call."""

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
    result: dict[str, Any] = {
        "project": project,
        "service": service,
        "before": len(running),
        "created": [],
        "removed": [],
    }
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
    return str(_create_started(dc, template.attrs, config, name, service).name)


def _create_started(
    dc: Any, attrs: dict[str, Any], config: dict[str, Any], name: str, service: str
) -> Any:
    """Create a container from config, join attrs' other networks, start it; remove it again
    (RemediationError) if it won't start."""
    created = dc.api.create_container_from_config(config, name=name)
    container = dc.containers.get(created["Id"])
    try:
        _connect_other_networks(dc, attrs, container, service)
        container.start()
    except docker_client.ERRORS as exc:
        container.remove(force=True)
        raise RemediationError(f"container {name} did not start: {exc}") from exc
    return container


def clone_config(
    attrs: dict[str, Any], number: int, service: str, *, recreate: bool = False
) -> dict[str, Any]:
    """The create body for a new replica, from `docker inspect` of an existing one.

    ``recreate``: for the container that replaces this one (the original is removed first),
    so fixed host ports and an explicitly set hostname are kept."""
    dropped = ("Domainname",) if recreate and _own_hostname(attrs) else ("Hostname", "Domainname")
    config = {k: v for k, v in attrs["Config"].items() if k not in dropped}
    # the image ID, not the tag: a tag moved since the service started would run other code
    config["Image"] = attrs["Image"]
    config["Labels"] = {**(config.get("Labels") or {}), NUMBER_LABEL: str(number)}
    host = {k: v for k, v in attrs["HostConfig"].items() if k not in _HOST_CONFIG_DROP}
    if not recreate:  # a fixed host port can only be bound once
        host["PortBindings"] = _ephemeral_ports(host.get("PortBindings") or {})
    config["HostConfig"] = host
    primary = host.get("NetworkMode", "")
    networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
    if primary in networks and _user_defined(primary):
        config["NetworkingConfig"] = {"EndpointsConfig": {primary: {"Aliases": [service]}}}
    return config


def _own_hostname(attrs: dict[str, Any]) -> bool:
    """The hostname was configured (the engine's default is the short container ID)."""
    return bool(attrs["Config"].get("Hostname")) and attrs["Config"]["Hostname"] != attrs["Id"][:12]


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


def recreate(settings: Settings, project: str, service: str | None) -> dict[str, Any]:
    """`docker compose down && up -d` for one service (every service when None), the way
    compose itself recreates: stop each container, rename it aside (`<short id>_<name>`),
    create and start a new one under its name and number from the newest container's
    configuration (per service), and only once every new one started remove the old ones
    (volumes stay).

    At most MAX_RECREATE containers (RemediationError otherwise, before anything is touched).
    The configurations are taken before the first stop. If a new container will not start,
    the new ones are removed and the old ones get their names back and are started again
    (as they were, stuck or not): RemediationError names the container that failed."""
    dc = docker_client.client(settings)
    every = compose_containers(dc, project, service)
    what = f"{project}/{service}" if service else f"project {project}"
    if not every:
        raise RemediationError(f"compose {what} has no container to recreate")
    if len(every) > MAX_RECREATE:
        raise RemediationError(
            f"compose {what} has {len(every)} containers; a hard reboot recreates at most"
            f" {MAX_RECREATE}"
        )
    plans = _recreate_plans(every)
    for _, _, attrs, config in plans:
        config["Image"] = _image_ref(dc, attrs)
    running = {c.id for c in every if c.status == "running"}
    for old in every:
        old.stop(timeout=STOP_TIMEOUT_SECONDS)
    aside: list[tuple[Any, str]] = []
    created: list[Any] = []
    try:
        for old in every:
            old.rename(f"{old.id[:12]}_{old.name}")
            aside.append((old, old.name))
        for svc, name, attrs, config in plans:
            created.append(_create_started(dc, attrs, config, name, svc))
    except _RECREATE_ERRORS as exc:
        _roll_back(created, aside, running)
        raise RemediationError(
            f"hard reboot of {what} failed, old containers put back: {exc}"
        ) from exc
    for old, _ in aside:
        old.remove(v=False)  # never volumes
    removed = [{"name": name, "id": old.id} for old, name in aside]
    made = [{"name": c.name, "id": c.id, "service": _service_of(c)} for c in created]
    return {"project": project, "service": service, "removed": removed, "created": made}


def _service_of(container: Any) -> str:
    return str(container.labels.get(docker_client.SERVICE_LABEL, ""))


def _roll_back(created: list[Any], aside: list[tuple[Any, str]], running: set[str]) -> None:
    """Remove the new containers, give the old ones their names back, start those that ran."""
    for new in created:
        new.remove(force=True)
    for old, name in aside:
        old.rename(name)
        if old.id in running:
            old.start()


def _image_ref(dc: Any, attrs: dict[str, Any]) -> str:
    """The image the container was created from by its name (as compose shows it) while that
    name still means the same image; its ID once the tag has moved (never other code)."""
    tag = attrs["Config"].get("Image") or ""
    try:
        if tag and dc.images.get(tag).id == attrs["Image"]:
            return str(tag)
    except docker_client.ERRORS:
        pass
    return str(attrs["Image"])


def _recreate_plans(every: list[Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(service, name, template attrs, create body) per container: each keeps its name and
    number and takes its service's newest container's configuration."""
    newest: dict[str, Any] = {}
    for c in every:
        svc = c.labels.get(docker_client.SERVICE_LABEL, "")
        if svc not in newest or c.attrs.get("Created", "") > newest[svc].attrs.get("Created", ""):
            newest[svc] = c
    plans = []
    for c in _newest_last(every):
        svc = c.labels.get(docker_client.SERVICE_LABEL, "")
        attrs = newest[svc].attrs
        config = clone_config(attrs, container_number(c), svc, recreate=True)
        plans.append((svc, c.name, attrs, config))
    return plans
