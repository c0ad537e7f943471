"""What the image update check and action share (runbook 001 "Monthly Operations 1. Security
Updates": `docker-compose pull`, `docker-compose up -d --build`).

The record of a service's last successful update lives in the state Redis, one hash per
service (``rem:images:<project>:<service>``: image ID, when, how); the check reads it, the
action writes it only once the service runs healthy on the new image. How healthy a
container is, whether a registry answers, and where a service's image comes from (its
name, a configured build context, or its compose file's build section) live here too.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import requests
from docker.auth import resolve_repository_name
from docker.utils import parse_repository_tag
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from remediation.clients import docker as docker_client
from remediation.guards import keys
from remediation.settings import ImageSettings
from remediation.settings.images import ImageService

RECORD_PREFIX = keys.PREFIX + "images:"
"""Followed by <project>:<service>: the last successful update of that service."""
RECORD_TTL_SECONDS = 400 * 86400
"""A record outlives any update interval (at most 366 days), and still expires."""
CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
MAX_COMPOSE_BYTES = 1024 * 1024
"""A compose file larger than this is not read."""
HEALTHY = ("healthy", "running")
"""A container's health as `health()` says it, when it counts as up."""


def record_key(project: str, service: str) -> str:
    return f"{RECORD_PREFIX}{project}:{service}"


def read_record(state: Any, project: str, service: str) -> dict[str, Any] | None:
    """The last successful update of the service (image_id, ref, updated_at, how), if any."""
    raw = state.get(record_key(project, service))
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def write_record(state: Any, project: str, service: str, record: dict[str, Any]) -> None:
    state.set(record_key(project, service), json.dumps(record), ex=RECORD_TTL_SECONDS)


def now(state: Any) -> float:
    """The state Redis server's clock, shared by every worker."""
    seconds, micros = state.time()
    return float(seconds) + float(micros) / 1e6


def health(container: Any) -> str:
    """healthy / starting / unhealthy with a healthcheck, running without one, else the
    container's status (exited, dead, restarting, created ...)."""
    if container.status != "running":
        return str(container.status)
    status = (docker_client.state(container).get("Health") or {}).get("Status")
    return str(status) if status else "running"


def due_reasons(
    cfg: ImageSettings, containers: list[Any], record: dict[str, Any] | None, at: float
) -> list[str]:
    """Why the service needs an update now (empty: it is current): never updated, updated
    longer than INTERVAL_DAYS ago, or not running healthy on the image last recorded."""
    if record is None:
        return ["never updated by update_images"]
    reasons = []
    age_days = (at - float(record.get("updated_at", 0))) / 86400
    if age_days >= cfg.interval_days:
        reasons.append(f"last updated {age_days:.0f} days ago (interval {cfg.interval_days})")
    for c in containers:
        if c.attrs.get("Image") != record.get("image_id"):
            reasons.append(
                f"{c.name} runs {str(c.attrs.get('Image'))[:19]}, not the recorded image"
            )
        elif health(c) not in HEALTHY:
            reasons.append(f"{c.name} is {health(c)} on the recorded image")
    return reasons


def image_ref(svc: ImageService, containers: list[Any]) -> str | None:
    """The name the service's image is pulled and tagged as: configured, or what its newest
    container was created from (None when that is a bare image ID)."""
    if svc.image:
        return svc.image
    names = [str(c.attrs.get("Config", {}).get("Image") or "") for c in containers]
    named = [n for n in names if n and not n.startswith("sha256:")]
    return named[-1] if named else None


def split_ref(ref: str) -> tuple[str, str]:
    """(repository, tag) of an image name; tag latest when none is given."""
    repo, tag = parse_repository_tag(ref)
    return repo, tag or "latest"


def registry_answers(ref: str, timeout: float) -> tuple[bool, str]:
    """Whether the registry of the image answers its /v2/ endpoint within timeout (any HTTP
    status counts: 401 is the usual answer), and a note saying which registry and how.

    The probe runs in a thread waited on for a bounded time: a name lookup is not covered
    by the HTTP timeout and may hang on a broken resolver."""
    repo, _ = split_ref(ref)
    index, _ = resolve_repository_name(repo)
    host = "registry-1.docker.io" if index in ("docker.io", "index.docker.io") else index
    schemes = ("https", "http") if _loopback(host) else ("https",)
    pool = ThreadPoolExecutor(1, thread_name_prefix="registry-probe")
    try:
        return pool.submit(_probe, host, schemes, timeout).result(timeout * len(schemes) + 1)
    except FutureTimeout:
        return False, f"registry {host} did not answer within {timeout:g}s (no answer)"
    finally:
        pool.shutdown(wait=False)


def _probe(host: str, schemes: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    last = ""
    for scheme in schemes:
        try:
            url = f"{scheme}://{host}/v2/"
            answer = requests.get(url, timeout=timeout, allow_redirects=False, stream=True)
            answer.close()
            return True, f"registry {host} answered ({answer.status_code})"
        except requests.RequestException as exc:
            last = type(exc).__name__
    return False, f"registry {host} did not answer within {timeout:g}s ({last})"


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "::1", "[::1]") or name.startswith("127.")


def build_source(
    cfg: ImageSettings, svc: ImageService, containers: list[Any]
) -> tuple[dict[str, Any] | None, str]:
    """(docker build arguments: path, dockerfile, buildargs; or None) and where they came
    from: the configured build_context, else the compose file's build section."""
    if svc.build_context is not None:
        return {
            "path": str(svc.build_context),
            "dockerfile": svc.dockerfile or "Dockerfile",
            "buildargs": dict(svc.build_args),
        }, f"build context {svc.build_context}"
    compose_file = cfg.compose_file or _labelled_compose_file(containers)
    if compose_file is None:
        return None, "no build context configured and no compose file known"
    return _compose_build(compose_file, svc)


def _labelled_compose_file(containers: list[Any]) -> Path | None:
    for c in reversed(containers):
        files = str(c.labels.get(CONFIG_FILES_LABEL) or "")
        if files:
            first = Path(files.split(",")[0])
            base = c.labels.get(WORKING_DIR_LABEL)
            return first if first.is_absolute() or not base else Path(base) / first
    return None


def _compose_build(path: Path, svc: ImageService) -> tuple[dict[str, Any] | None, str]:
    """The service's `build:` section of a compose file (a context string or a mapping with
    context, dockerfile, args); variables (${...}) are not interpolated: refused."""
    try:
        if path.stat().st_size > MAX_COMPOSE_BYTES:
            return None, f"compose file {path} is larger than {MAX_COMPOSE_BYTES} bytes"
        doc = YAML(typ="safe", pure=True).load(path.read_text())
    except (OSError, YAMLError, UnicodeDecodeError) as exc:
        return None, f"compose file {path} could not be read ({type(exc).__name__})"
    spec = ((doc or {}).get("services") or {}).get(svc.service) if isinstance(doc, dict) else None
    build = spec.get("build") if isinstance(spec, dict) else None
    if build is None:
        return None, f"compose file {path} has no build section for {svc.service}"
    if isinstance(build, str):
        build = {"context": build}
    if not isinstance(build, dict):
        return None, f"compose file {path}: build of {svc.service} is not understood"
    context, dockerfile = str(build.get("context", ".")), str(build.get("dockerfile", "Dockerfile"))
    args = build.get("args") or {}
    if isinstance(args, list):
        args = dict(a.split("=", 1) for a in args if isinstance(a, str) and "=" in a)
    if "$" in context + dockerfile + json.dumps(args, default=str):
        return None, f"compose file {path}: build of {svc.service} uses variables; not interpolated"
    folder = (path.parent / context).resolve()
    return {
        "path": str(folder),
        "dockerfile": dockerfile,
        "buildargs": {str(k): str(v) for k, v in dict(args).items()},
    }, f"compose build section in {path}"
