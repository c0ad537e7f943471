"""Runbook 001 "Monthly Operations 1. Security Updates": `docker-compose pull` and
`docker-compose up -d --build`, for the configured services of the compose project, one
service (and one container) at a time, each verified healthy or rolled back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field

from remediation.clients import docker as docker_client
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult, FollowUp
from remediation.guards import keys as guard_keys
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical
from remediation.security import image_update
from remediation.security.images import image_ref, now, write_record
from remediation.settings.images import ImageService

COOLDOWN = timedelta(days=7)
"""After a successful update, the project is not updated again for a week."""
TIMEOUT = timedelta(hours=1)
"""Soft time limit; MAX_RUN_SECONDS (50 min) stops starting services well before it."""
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
ServiceName = Annotated[str, Field(pattern=_NAME, max_length=128)]
GOOD = ("updated", "current")
ROLLED_BACK = ("rolled_back", "rollback_failed")


class UpdateImagesParams(ActionParams):
    target: Literal["docker"] = Field("docker", description="the engine at CONTAINERS__DOCKER_URL")
    services: list[ServiceName] | None = Field(
        None, max_length=32, description="some of IMAGES__SERVICES; unset = all of them"
    )
    project: str | None = Field(
        None,
        pattern=_NAME,
        max_length=128,
        description="set by resolve from CONTAINERS__PROJECT; a caller may only repeat it",
    )


def _resource(params: UpdateImagesParams) -> str:
    return f"{params.target}/images/{params.project}"


def resolve_update(ctx: CheckContext, params: UpdateImagesParams) -> Resolved:
    """The configured project and the configured services the call names (all of them when
    it names none), in configuration order; refused for anything else."""
    project = ctx.settings.containers.project
    if not project:
        raise Refused("no compose project: set REMEDIATION_CONTAINERS__PROJECT")
    if params.project is not None and params.project != project:
        raise Refused(f"the compose project is {project}, not {params.project}")
    configured = [s.service for s in ctx.settings.images.services]
    if not configured:
        raise Refused("no services to update: set REMEDIATION_IMAGES__SERVICES", notice=False)
    wanted = configured if params.services is None else params.services
    unknown = sorted(set(wanted) - set(configured))
    if unknown:
        raise Refused(f"not in REMEDIATION_IMAGES__SERVICES: {', '.join(unknown)}")
    selected = [s for s in configured if s in wanted]
    return canonical(params, {"services": selected}, services=selected, project=project)


@action(
    "update_images",
    resolve=resolve_update,
    resource=_resource,
    cooldown=COOLDOWN,
    max_per_hour=2,
    timeout=TIMEOUT,
)
def update_images(ctx: ActionContext, params: UpdateImagesParams) -> ActionResult:
    """Monthly image update of the configured compose services, with rollback.

    Runbook 001 "Monthly Operations 1. Security Updates" (`docker-compose pull`,
    `docker-compose up -d --build`). For each service of REMEDIATION_IMAGES__SERVICES in
    order (a call may name some of them): pull its image when the registry answers within
    REGISTRY_TIMEOUT_SECONDS, else rebuild it (the configured build context, or the
    service's compose build section); if that is a new image, recreate the service's
    containers one at a time on it, keeping their configuration, and wait until each is
    healthy (HEALTHCHECK healthy, or running STABLE_SECONDS without one) within
    HEALTH_WINDOW_SECONDS. Old containers are renamed aside and removed only once the
    whole service is healthy; one that is not puts the old containers back on the old image
    (its name tagged back onto it) and stops the update: the remaining services are left
    untouched and operators are told. The previous image keeps a `:previous` tag. Services
    that are not running healthy beforehand, or that restart_container or recreate_service
    is working on, are skipped; while a service is updated their locks on it are held, so
    neither acts on its containers mid-update. The update is recorded per service
    (image ID, time) for the image_updates check, which verifies it. Lock and a 7-day
    cooldown per project, 2 per hour."""
    cfg = ctx.settings.images
    project = str(params.project)
    wanted = {s.service: s for s in cfg.services}
    dc = docker_client.client(ctx.settings)
    deadline = time.monotonic() + cfg.max_run_seconds
    report: dict[str, Any] = {}
    for name in params.services or []:
        if time.monotonic() >= deadline:
            report[name] = {"result": "not_started", "reason": "MAX_RUN_SECONDS spent"}
            continue
        report[name] = _update_service(ctx, dc, project, wanted[name])
        if report[name]["result"] in ROLLED_BACK:
            for rest in (params.services or [])[len(report) :]:
                report[rest] = {"result": "not_started", "reason": f"{name} was rolled back"}
            break
    return _result(ctx, project, report)


def _update_service(ctx: ActionContext, dc: Any, project: str, svc: ImageService) -> dict[str, Any]:
    containers = docker_client.compose_containers(dc, project, svc.service)
    why_not = image_update.ready(containers)
    if why_not:
        return {"result": "skipped", "reason": why_not}
    ref = image_ref(svc, containers)
    if ref is None:
        return {"result": "no_image", "reason": "its containers run a bare image ID: set image"}
    with _holding(ctx, svc.service, containers) as busy:
        if busy:
            return {"result": "skipped", "reason": f"{busy} is held by another action"}
        return _fetch_and_recreate(ctx, dc, project, svc, ref, containers)


def _fetch_and_recreate(
    ctx: ActionContext, dc: Any, project: str, svc: ImageService, ref: str, containers: list[Any]
) -> dict[str, Any]:
    fetched = image_update.fetch(ctx.settings, dc, svc, ref, containers)
    out: dict[str, Any] = {"ref": ref, "notes": fetched.notes}
    if fetched.image is None:
        return {**out, "result": "no_image", "reason": "neither pulled nor rebuilt"}
    old_id = str(containers[-1].attrs["Image"])
    new_id = str(fetched.image.id)
    out.update(how=fetched.how, image_id=new_id, previous_image_id=old_id)
    if all(c.attrs["Image"] == new_id for c in containers):
        out["result"] = "current"
    else:
        done = image_update.Recreation(dc, ctx.settings, project, svc.service, old_id, ref)
        out.update(done.run(containers, fetched.image))
    if out["result"] in GOOD:
        record = {"image_id": new_id, "ref": ref, "how": fetched.how, "updated_at": now(ctx.state)}
        write_record(ctx.state, project, svc.service, {**record, "previous_image_id": old_id})
    return out


@contextmanager
def _holding(ctx: ActionContext, service: str, containers: list[Any]) -> Iterator[str | None]:
    """Hold restart_container's locks on the service's containers (under their names and the
    names they have while set aside) and recreate_service's on the service, for as long as
    it is updated: a stopped old container or a new one still starting is not restarted or
    recreated under the update's feet (those calls are suppressed by the lock, audited).
    Yields None, or the lock someone else holds (then nothing is held or touched)."""
    names = [c.name for c in containers] + [f"{c.id[:12]}_{c.name}" for c in containers]
    wanted = [guard_keys.lock("restart_container", f"docker/{n}") for n in names]
    wanted += [
        guard_keys.lock("recreate_service", f"docker/service/{service}"),
        guard_keys.lock("recreate_service", "docker/project"),
    ]
    token, held = f"update_images:{uuid.uuid4().hex}", []
    ttl = int(TIMEOUT.total_seconds()) + 120  # released below; expires if the worker dies
    try:
        for key in wanted:
            if not ctx.state.set(key, token, nx=True, ex=ttl):
                yield key
                return
            held.append(key)
        yield None
    finally:
        for key in held:
            if ctx.state.get(key) in (token, token.encode()):
                ctx.state.delete(key)


def _result(ctx: ActionContext, project: str, report: dict[str, Any]) -> ActionResult:
    results = {name: r["result"] for name, r in report.items()}
    back = [n for n, r in results.items() if r in ROLLED_BACK]
    ok = all(r in GOOD for r in results.values())
    parts = [f"{n} {r.replace('_', ' ')}" for n, r in results.items()]
    summary = f"image update of {project}: " + ", ".join(parts)
    if back:
        summary += "; remaining services not updated: escalated"
    severity = "critical" if "rollback_failed" in results.values() else "high" if back else "info"
    notice = FollowUp(
        action="notify",
        params={
            "text": summary[:2000],
            "incident": ctx.trigger.incident if ctx.trigger else f"update_images:{project}",
            "kind": "image_rollback" if back else "image_update",
            "severity": severity if ok or back else "warning",
        },
    )
    changed = any(r == "updated" for r in results.values()) or bool(back)
    return ActionResult(
        ok=ok,
        changed=changed,
        summary=summary,
        detail={"project": project, "services": report},
        follow_up=[notice],
    )
