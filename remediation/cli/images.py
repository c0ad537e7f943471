"""`remediation images`: the compose services update_images looks after, what they run, and
when they were last updated (runbook 001 "Monthly Operations 1. Security Updates")."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from remediation.cli.output import emit, table
from remediation.clients import docker as docker_client
from remediation.clients import redis as redis_clients
from remediation.security.image_update import tag_name
from remediation.security.images import due_reasons, health, now, read_record
from remediation.settings import Settings


def cmd_images(args: argparse.Namespace, s: Settings) -> int:
    """One row per configured service: containers and their health, the image they run, the
    recorded update (image, when, how), the :previous image, and why an update is due."""
    project = s.containers.project or ""
    if not project or not s.images.services:
        emit(args, [], "no services: set REMEDIATION_CONTAINERS__PROJECT and IMAGES__SERVICES")
        return 0
    state = redis_clients.state(s)
    dc = docker_client.client(s)
    at = now(state)
    rows = [_row(s, dc, state, project, svc.service, at) for svc in s.images.services]
    cols = ["service", "containers", "health", "image", "recorded", "updated_at", "how", "due"]
    emit(args, rows, table(rows, cols, wide="due"))
    return 0


def _row(s: Settings, dc: Any, state: Any, project: str, service: str, at: float) -> dict[str, Any]:
    containers = docker_client.compose_containers(dc, project, service)
    record = read_record(state, project, service)
    previous = f"{tag_name(s.images.rollback_repository, project, service)}:previous"
    try:
        previous_id: str | None = str(dc.images.get(previous).id)
    except docker_client.ERRORS:
        previous_id = None
    updated = (record or {}).get("updated_at")
    return {
        "service": service,
        "containers": len(containers),
        "health": ",".join(sorted({health(c) for c in containers})) or "-",
        "image": ",".join(sorted({_short(c.attrs.get("Image")) for c in containers})) or "-",
        "recorded": _short((record or {}).get("image_id")),
        "updated_at": datetime.fromtimestamp(float(updated), UTC) if updated else None,
        "how": (record or {}).get("how"),
        "previous": previous if previous_id else None,
        "due": "; ".join(due_reasons(s.images, containers, record, at))
        if containers
        else "no container",
    }


def _short(image_id: Any) -> str:
    return str(image_id or "-").removeprefix("sha256:")[:12]
