"""Docker (REMEDIATION_CONTAINERS__DOCKER_URL): socket readable and writable, engine answers,
and each compose project the actions act on has containers (found by label, as they are).

Projects: REMEDIATION_CONTAINERS__PROJECT (restart_container, reset_container_restarts, and
recreate_service when __HARD_REBOOT is on) and the compose scale targets of
REMEDIATION_WORKERS__SCALE_TARGETS (scale_workers). With neither, Docker is not used: one ok row.
"""

from __future__ import annotations

import os
import stat
from urllib.parse import urlsplit

import docker

from remediation.clients.docker import ERRORS, PROJECT_LABEL, compose_containers
from remediation.doctor import PROBE_TIMEOUT, Result, fail, ok
from remediation.redact import redact_text
from remediation.settings import Settings

AREA = "docker"
URL_VAR = "REMEDIATION_CONTAINERS__DOCKER_URL"
PROJECT_VAR = "REMEDIATION_CONTAINERS__PROJECT"
SCALE_VAR = "REMEDIATION_WORKERS__SCALE_TARGETS"
CONTAINER_ACTIONS = ("reset_container_restarts", "restart_container")
# What making a client raises: the engine's errors, or a URL it cannot use.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*ERRORS, ValueError)


def projects(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Compose project -> the actions that act on its containers."""
    out: dict[str, set[str]] = {}
    cfg = settings.containers
    if cfg.project:
        acts = {*CONTAINER_ACTIONS, *(("recreate_service",) if cfg.hard_reboot else ())}
        out.setdefault(cfg.project, set()).update(acts)
    for target in settings.workers.scale_targets:
        if target.backend == "compose" and target.project:
            out.setdefault(target.project, set()).add("scale_workers")
    return {name: tuple(sorted(acts)) for name, acts in out.items()}


def probe(settings: Settings) -> list[Result]:
    """Socket, engine, then one row per compose project; one ok row when Docker is unused."""
    wanted = projects(settings)
    url = settings.containers.docker_url
    if not wanted:
        detail = f"{PROJECT_VAR} unset and no compose {SCALE_VAR}: no action uses Docker"
        return [ok(AREA, "docker", "configured", detail)]
    everyone = tuple(sorted({a for acts in wanted.values() for a in acts}))
    shown = _shown(url)
    socket_row = _socket(url, shown, everyone)
    if socket_row is not None and not socket_row.ok:
        return [socket_row]
    rows = [socket_row] if socket_row is not None else []
    try:
        dc = docker.DockerClient(base_url=url, timeout=int(max(PROBE_TIMEOUT, 1)))
    except _CONNECT_ERRORS as exc:
        return [*rows, _down(shown, exc, everyone)]
    try:
        try:
            dc.ping()
            version = dc.version().get("Version", "?")
        except ERRORS as exc:
            return [*rows, _down(shown, exc, everyone)]
        rows.append(ok(AREA, shown, "engine answers", f"Docker {version}", needed_by=everyone))
        rows += [_project(dc, name, acts) for name, acts in wanted.items()]
    finally:
        dc.close()
    return rows


def _shown(url: str) -> str:
    """The URL without user or password (a tcp:// engine URL may carry them)."""
    parts = urlsplit(url)
    if parts.scheme in ("unix", "npipe") or not parts.hostname:
        return url if "@" not in url else f"{parts.scheme}://(host)"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _socket(url: str, shown: str, everyone: tuple[str, ...]) -> Result | None:
    """For a unix:// URL: the socket exists, is a socket, and this user may read and write it."""
    if not url.startswith("unix://"):
        return None
    path = url.removeprefix("unix://")
    what = f"socket {path} readable and writable"
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        fix = f"start dockerd, or set {URL_VAR} to the engine's socket"
        return fail(AREA, shown, what, f"{exc.strerror}", fix, needed_by=everyone)
    if not stat.S_ISSOCK(mode):
        fix = f"set {URL_VAR} to the engine's socket"
        return fail(AREA, shown, what, "not a socket", fix, needed_by=everyone)
    if not os.access(path, os.R_OK | os.W_OK):
        user = _user()
        detail = f"user {user} may not read and write it (mode {stat.S_IMODE(mode):o})"
        fix = f"add {user} to the socket's group (usermod -aG docker {user}) and restart the worker"
        return fail(AREA, shown, what, detail, fix, needed_by=everyone)
    return ok(AREA, shown, what, needed_by=everyone)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def _down(shown: str, exc: BaseException, everyone: tuple[str, ...]) -> Result:
    why = redact_text(" ".join(f"{type(exc).__name__}: {exc}".split()))[:300]
    fix = f"start the Docker engine or correct {URL_VAR}"
    return fail(AREA, shown, "engine answers", why, fix, needed_by=everyone)


def _project(dc: docker.DockerClient, name: str, acts: tuple[str, ...]) -> Result:
    what = f"containers labelled {PROJECT_LABEL}={name}"
    try:
        found = compose_containers(dc, name)
    except ERRORS as exc:
        why = redact_text(f"{type(exc).__name__}: {exc}")[:300]
        return fail(AREA, name, what, why, "check the engine", needed_by=acts)
    if not found:
        fix = (
            f"start the project (docker compose -p {name} up -d), or correct {PROJECT_VAR} /"
            f" the scale target's project: its containers must carry the label"
            f" {PROJECT_LABEL}={name}"
        )
        return fail(AREA, name, what, "0 containers found", fix, needed_by=acts)
    running = sum(1 for c in found if c.status == "running")
    return ok(AREA, name, what, f"{len(found)} container(s), {running} running", needed_by=acts)
