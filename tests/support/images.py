"""Images for the image update tests, built from the busybox test image with the SDK, and
compose-labelled containers running them. Every name carries the test project's name, so
cleaning up removes only what these tests made."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from pathlib import Path
from typing import Any

import docker

from remediation.clients.docker import NUMBER_LABEL, PROJECT_LABEL, SERVICE_LABEL
from remediation.security.image_update import tag_name
from tests.support.docker_compose import IMAGE, ComposeProject

SERVE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
ROLLBACK_REPOSITORY = "rem-test-rollback"


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dockerfile(marker: str, check_file: str | None, has_file: bool) -> str:
    """A Dockerfile FROM the busybox test image with a version marker and, when check_file
    is set, a HEALTHCHECK that passes only if that file exists (has_file puts it there)."""
    lines = [f"FROM {IMAGE}", "COPY version /version"]
    if check_file and has_file:
        lines.append(f"COPY version {check_file}")
    if check_file:
        lines.append(
            f"HEALTHCHECK --interval=300ms --timeout=2s --retries=2 CMD test -f {check_file}"
        )
    lines.append('CMD ["sh", "-c", "trap \'exit 0\' TERM; while true; do sleep 0.1; done"]')
    return "\n".join(lines) + "\n"


def context(folder: Path, marker: str, check_file: str | None, has_file: bool = True) -> Path:
    """A build context folder for dockerfile(...)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(dockerfile(marker, check_file, has_file))
    (folder / "version").write_text(marker + "\n")
    return folder


def build(dc: Any, tag: str, marker: str, check_file: str | None, has_file: bool = True) -> Any:
    """Build and tag an image (see dockerfile); returns the image."""
    with tempfile.TemporaryDirectory() as tmp:
        image, _ = dc.images.build(
            path=str(context(Path(tmp), marker, check_file, has_file)), tag=tag, rm=True
        )
    return image


def run_service(project: ComposeProject, service: str, image: str, **kw: Any) -> Any:
    """Create and start the next container of a service of the project on an image."""
    project.numbers += 1
    labels = {
        PROJECT_LABEL: project.name,
        SERVICE_LABEL: service,
        NUMBER_LABEL: str(project.numbers),
        "com.docker.compose.oneoff": "False",
        **kw.pop("labels", {}),
    }
    kw.setdefault("network_mode", project.network_mode)
    container = project.dc.containers.create(
        image, name=f"{project.name}-{service}-{project.numbers}", labels=labels, **kw
    )
    container.start()
    return container


def remove_images(dc: Any, project: str, refs: list[str], services: list[str]) -> None:
    """Remove the images these tests made, by name or ID (one whose :previous tag moved on
    has only its ID left), after the containers are gone."""
    names = list(refs)
    for service in services:
        repo = tag_name(ROLLBACK_REPOSITORY, project, service)
        names += [f"{repo}:previous", f"{repo}:rejected"]
    ids = set()
    for name in names:
        with contextlib.suppress(docker.errors.DockerException):  # absent already
            ids.add(dc.images.get(name).id)
            dc.images.remove(name)
    for image_id in ids:
        with contextlib.suppress(docker.errors.DockerException):  # gone with its last tag
            dc.images.remove(image_id)
