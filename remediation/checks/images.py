"""Runbook 001 "Monthly Operations 1. Security Updates": are the compose services' images
due for their monthly update, and do the services run healthy on the image last recorded?"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from remediation.clients import docker as docker_client
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.redact import redact_text
from remediation.registry import check
from remediation.security.images import due_reasons, now, read_record

CHECK = "image_updates"


class ImageUpdatesParams(CheckParams):
    target: Literal["docker"] = Field("docker", description="the engine at CONTAINERS__DOCKER_URL")


def _finding(subject: str, kind: str, severity: Severity, **kw: Any) -> Finding:
    return Finding(
        check=CHECK, target="docker", subject=subject, kind=kind, severity=severity, **kw
    )


@check(CHECK)
def image_updates(ctx: CheckContext, params: ImageUpdatesParams) -> list[Finding]:
    """Compose services whose monthly image update is due (runbook 001 Monthly Operations 1).

    For each service of REMEDIATION_IMAGES__SERVICES in REMEDIATION_CONTAINERS__PROJECT: due
    when update_images never updated it, updated it INTERVAL_DAYS or more ago, or when its
    containers do not run healthy on the image it recorded. One image_update_due finding
    for the project lists the due services and why (info; warning when a service runs
    another image than recorded or is not healthy on it); update_images acts on it and this
    check verifies the update. A configured service without a container is
    image_service_missing (warning); an engine that does not answer, docker_unreachable."""
    cfg = ctx.settings.images
    project = ctx.settings.containers.project
    if not project or not cfg.services:
        return [
            _finding(
                "",
                "image_updates_unconfigured",
                Severity.INFO,
                summary="set REMEDIATION_CONTAINERS__PROJECT and REMEDIATION_IMAGES__SERVICES",
            )
        ]
    try:
        dc = docker_client.client(ctx.settings)
        found = {
            s.service: docker_client.compose_containers(dc, project, s.service)
            for s in cfg.services
        }
    except docker_client.FAILURES as exc:
        error = redact_text(f"{type(exc).__name__}: {exc}")[:500]
        return [
            _finding(
                "",
                "docker_unreachable",
                Severity.HIGH,
                evidence={"project": project, "error": error},
                summary=f"Docker engine does not answer: {error}",
            )
        ]
    at = now(ctx.state)
    findings, due = [], {}
    for name, containers in found.items():
        if not containers:
            findings.append(_missing(project, name))
            continue
        reasons = due_reasons(cfg, containers, read_record(ctx.state, project, name), at)
        if reasons:
            due[name] = reasons
    if due:
        findings.append(_due(project, due))
    return findings


def _missing(project: str, service: str) -> Finding:
    return _finding(
        service,
        "image_service_missing",
        Severity.WARNING,
        evidence={"project": project, "service": service},
        summary=f"configured service {project}/{service} has no container to update",
    )


def _due(project: str, due: dict[str, list[str]]) -> Finding:
    drifted = any("recorded image" in r for reasons in due.values() for r in reasons)
    return _finding(
        project,
        "image_update_due",
        Severity.WARNING if drifted else Severity.INFO,
        observed=len(due),
        threshold=0,
        evidence={"project": project, "services": due},
        summary=f"image update due for {project}: "
        + "; ".join(f"{name} ({', '.join(reasons)})" for name, reasons in due.items()),
    )
