"""Update one compose service's image the way `docker compose pull && up -d --build` would,
through the Docker API, one container at a time, with a rollback.

The SDK has no compose, so recreating keeps what compose would keep by copying it from the
old container (name, number, labels, env, command, networks and aliases, mounts and its
anonymous volumes, ports, restart policy, limits, healthcheck) while leaving to the new
image what the old container only inherited from the old image (its ENV, CMD, ENTRYPOINT,
HEALTHCHECK, labels, working dir, user: compared with the old image's own configuration):
otherwise a new image's new healthcheck or command would never run.

Per container: stop, rename aside (`<short id>_<name>`), create and start the new one under
the name, wait until it is healthy (its HEALTHCHECK says healthy; without one, running
unrestarted for STABLE_SECONDS) within the window. Only when every container of the service
is healthy are the old ones removed (never volumes). Otherwise the new ones are removed, the
old ones get their names back and are started (recreated from the old image ID if one has
vanished), the image name is tagged back onto the old image, and the rejected image is kept
under one `:rejected` tag for the operator. The previous image keeps one `:previous` tag.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import BuildError, NotFound

from remediation import compose
from remediation.clients import docker as docker_client
from remediation.errors import RemediationError
from remediation.security.images import (
    HEALTHY,
    build_source,
    health,
    registry_answers,
    split_ref,
)
from remediation.settings import Settings
from remediation.settings.images import ImageService

POLL_SECONDS = 0.5
"""How often a recreated container's health is looked at."""
STOP_TIMEOUT_SECONDS = compose.STOP_TIMEOUT_SECONDS
IMAGE_DEFAULTS = (
    "Cmd",
    "Entrypoint",
    "Healthcheck",
    "WorkingDir",
    "User",
    "StopSignal",
    "Shell",
    "OnBuild",
    "ExposedPorts",
    "Volumes",
    "ArgsEscaped",
)
"""Config fields a container inherits from its image unless compose set them."""
_FAILURES: tuple[type[BaseException], ...] = (*docker_client.ERRORS, RemediationError)


class NotHealthy(RemediationError):
    """A recreated container did not become healthy within the window."""


@dataclass
class NewImage:
    """Where the service's new image came from, or why there is none."""

    image: Any = None
    how: str = ""
    notes: list[str] = field(default_factory=list)


def fetch(
    settings: Settings, dc: Any, svc: ImageService, ref: str, containers: list[Any]
) -> NewImage:
    """Pull the image when its registry answers (within REGISTRY_TIMEOUT_SECONDS), else
    rebuild it from the configured context or the compose build section, tagged as ref."""
    cfg, out = settings.images, NewImage()
    if svc.pull:
        answers, note = registry_answers(ref, cfg.registry_timeout_seconds)
        out.notes.append(note)
        if answers:
            pulled = _pull(settings, dc, ref, out.notes)
            if pulled is not None:
                out.image, out.how = pulled, "pulled"
                return out
    source, where = build_source(cfg, svc, containers)
    if source is None:
        out.notes.append(f"no rebuild: {where}")
        return out
    try:
        out.image, _ = dc.images.build(
            tag=ref,
            rm=True,
            forcerm=True,
            pull=cfg.build_pull,
            timeout=cfg.build_timeout_seconds,
            **source,
        )
    except (BuildError, TypeError, *docker_client.ERRORS) as exc:
        out.notes.append(f"rebuild from {where} failed: {_short(exc)}")
        return out
    out.how = "built"
    out.notes.append(f"rebuilt from {where}")
    return out


def _pull(settings: Settings, dc: Any, ref: str, notes: list[str]) -> Any:
    repo, tag = split_ref(ref)
    api = docker.APIClient(
        base_url=settings.containers.docker_url, timeout=settings.images.pull_timeout_seconds
    )
    try:
        api.pull(repo, tag=tag)
        image = dc.images.get(f"{repo}:{tag}")
    except docker_client.ERRORS as exc:
        notes.append(f"pull of {ref} failed: {_short(exc)}")
        return None
    finally:
        api.close()
    notes.append(f"pulled {ref}")
    return image


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def tag_name(repository: str, project: str, service: str) -> str:
    """<repository>/<project>-<service>, lower case, as a repository name must be."""
    part = re.sub(r"[^a-z0-9._-]+", "-", f"{project}-{service}".lower()).strip("-._")
    return f"{repository}/{part or 'service'}"


def rebase_config(dc: Any, attrs: dict[str, Any], service: str, image: str) -> dict[str, Any]:
    """The create body for the container that replaces this one on another image."""
    config = compose.clone_config(attrs, _number(attrs), service, recreate=True)
    try:
        inherited = dc.images.get(attrs["Image"]).attrs.get("Config") or {}
    except docker_client.ERRORS:
        inherited = {}
    for key in IMAGE_DEFAULTS:
        if key in config and config[key] == inherited.get(key):
            del config[key]
    image_env = set(inherited.get("Env") or [])
    config["Env"] = [e for e in config.get("Env") or [] if e not in image_env]
    image_labels = inherited.get("Labels") or {}
    labels = config.get("Labels") or {}
    config["Labels"] = {k: v for k, v in labels.items() if image_labels.get(k) != v}
    config["Image"] = image
    _keep_anonymous_volumes(config, attrs)
    return config


def _number(attrs: dict[str, Any]) -> int:
    try:
        return int((attrs["Config"].get("Labels") or {}).get(docker_client.NUMBER_LABEL, "0"))
    except ValueError:
        return 0


def _keep_anonymous_volumes(config: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Mount the old container's anonymous volumes at the same places (as compose does)."""
    host = config["HostConfig"]
    covered = {str(b).split(":")[1] for b in host.get("Binds") or [] if ":" in str(b)}
    covered |= {m.get("Target") for m in host.get("Mounts") or []}
    binds = list(host.get("Binds") or [])
    for m in attrs.get("Mounts") or []:
        if m.get("Type") == "volume" and m.get("Name") and m.get("Destination") not in covered:
            binds.append(f"{m['Name']}:{m['Destination']}")
    if binds:
        host["Binds"] = binds


def create_started(
    dc: Any, attrs: dict[str, Any], config: dict[str, Any], name: str, service: str
) -> Any:
    """Create a container from config, join attrs' other networks, start it."""
    created = dc.api.create_container_from_config(config, name=name)
    container = dc.containers.get(created["Id"])
    try:
        primary = attrs["HostConfig"].get("NetworkMode", "")
        for net in attrs.get("NetworkSettings", {}).get("Networks") or {}:
            if net != primary and net not in ("bridge", "host", "none", "default"):
                dc.networks.get(net).connect(container, aliases=[service])
        container.start()
    except docker_client.ERRORS:
        container.remove(force=True)
        raise
    return container


def wait_healthy(dc: Any, cid: str, window: float, stable: float) -> tuple[bool, str]:
    """Whether the container becomes healthy within window seconds: its healthcheck says
    healthy, or (without one) it runs unrestarted for stable seconds. Unhealthy, exited or
    dead ends the wait at once. Also the last state seen."""
    deadline = time.monotonic() + window
    since, started = None, None
    while True:
        try:
            c = dc.containers.get(cid)
        except NotFound:
            return False, "gone"
        seen = health(c)
        if seen == "healthy":
            return True, seen
        if seen in ("unhealthy", "exited", "dead"):
            return False, seen
        now = time.monotonic()
        at = docker_client.state(c).get("StartedAt")
        if seen != "running" or at != started:
            since, started = (now if seen == "running" else None), at
        if since is not None and now - since >= stable:
            return True, seen
        if now >= deadline:
            return False, f"{seen} after {window:g}s"
        time.sleep(POLL_SECONDS)


@dataclass
class Aside:
    """An old container renamed aside, and what it takes to put it back."""

    container: Any
    name: str
    running: bool
    attrs: dict[str, Any]


@dataclass
class Recreation:
    """One service recreated on a new image, container by container."""

    dc: Any
    settings: Settings
    project: str
    service: str
    old_image_id: str
    ref: str
    aside: list[Aside] = field(default_factory=list)
    created: list[Any] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)

    def run(self, containers: list[Any], new_image: Any) -> dict[str, Any]:
        """Recreate every container on new_image; roll back at the first that is not
        healthy in time. A dict: result updated / rolled_back / rollback_failed, states."""
        cfg = self.settings.images
        repo = tag_name(cfg.rollback_repository, self.project, self.service)
        self.dc.images.get(self.old_image_id).tag(repo, "previous")
        image = self._ref_or_id(new_image.id)
        try:
            for old in sorted(containers, key=docker_client.container_number):
                self._replace(old, image)
        except BaseException as exc:  # a soft time limit too: never leave the service aside
            back = self.roll_back(new_image, repo)
            if not isinstance(exc, _FAILURES):
                raise
            return {
                "result": "rolled_back" if back else "rollback_failed",
                "reason": _short(exc),
                "states": self.states,
                "previous_tag": f"{repo}:previous",
                "rejected_tag": f"{repo}:rejected",
            }
        for a in self.aside:
            a.container.remove(v=False)  # never volumes
        return {"result": "updated", "states": self.states, "previous_tag": f"{repo}:previous"}

    def _ref_or_id(self, image_id: str) -> str:
        """The image name when it names this image (as compose shows it), else the ID."""
        try:
            if self.dc.images.get(self.ref).id == image_id:
                return self.ref
        except docker_client.ERRORS:
            pass
        return image_id

    def _replace(self, old: Any, image: str) -> None:
        cfg = self.settings.images
        attrs, name = old.attrs, old.name
        config = rebase_config(self.dc, attrs, self.service, image)
        running = old.status == "running"
        old.stop(timeout=STOP_TIMEOUT_SECONDS)
        old.rename(f"{old.id[:12]}_{name}")
        self.aside.append(Aside(old, name, running, attrs))
        new = create_started(self.dc, attrs, config, name, self.service)
        self.created.append(new)
        ok, seen = wait_healthy(self.dc, new.id, cfg.health_window_seconds, cfg.stable_seconds)
        self.states[name] = seen
        if not ok:
            raise NotHealthy(f"{name} was {seen} on the new image")

    def roll_back(self, new_image: Any, repo: str) -> bool:
        """New containers removed, old ones back under their names and started, the image
        name on the old image again; whether every old one is healthy again in the window."""
        cfg = self.settings.images
        for new in self.created:
            try:
                new.remove(force=True)
            except NotFound:
                pass
        repository, tag = split_ref(self.ref)
        try:
            self.dc.images.get(self.old_image_id).tag(repository, tag)
            new_image.tag(repo, "rejected")
        except docker_client.ERRORS:
            pass  # the containers matter more than the names; they are put back below
        back = []
        for a in self.aside:
            try:
                a.container.rename(a.name)
                if a.running:
                    a.container.start()
                back.append(a.container.id)
            except NotFound:  # gone meanwhile: recreate it from the old image ID
                config = compose.clone_config(
                    a.attrs, _number(a.attrs), self.service, recreate=True
                )
                back.append(create_started(self.dc, a.attrs, config, a.name, self.service).id)
        window, stable = cfg.health_window_seconds, cfg.stable_seconds
        results = [wait_healthy(self.dc, cid, window, stable) for cid in back]
        for a, (_, seen) in zip(self.aside, results, strict=True):
            self.states[f"{a.name} (rolled back)"] = seen
        return all(ok for ok, _ in results)


def ready(containers: list[Any]) -> str | None:
    """Why the service cannot be updated now (None: every container runs healthy)."""
    if not containers:
        return "no container"
    if len(containers) > compose.MAX_RECREATE:
        return f"{len(containers)} containers; at most {compose.MAX_RECREATE} are recreated"
    unwell = [f"{c.name} is {health(c)}" for c in containers if health(c) not in HEALTHY]
    if unwell:
        return "not healthy before the update (restart_container's job): " + ", ".join(unwell)
    return None
