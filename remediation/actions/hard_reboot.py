"""Runbook 000 "Docker Management" step 4, hard reboot when stuck: `docker compose down &&
docker compose up -d`, for the compose service restart_container gave up on.

Opt-in (REMEDIATION_CONTAINERS__HARD_REBOOT), at most once an hour per service, and only the
containers of that one service (the whole project with HARD_REBOOT_SCOPE=project), never
volumes, never images.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Literal

from pydantic import Field

from remediation import compose
from remediation.actions.containers import find_container, forget_restarts
from remediation.clients import docker as docker_client
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Deferred, Refused
from remediation.findings import ActionResult, FollowUp
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical
from remediation.settings import Settings

COOLDOWN = timedelta(hours=1)
"""One hard reboot per service (or project) per hour, however often it is asked for."""
POLL_SECONDS = 0.5
"""How often the recreated containers are looked at while waiting for them to come up."""
STABLE_SECONDS = 3.0
"""How long recreated containers must keep running, unrestarted, to count as up: one that
dies at start is running for a moment."""
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
_OFF = (
    "hard reboot is off: set REMEDIATION_CONTAINERS__HARD_REBOOT=true to let recreate_service"
    " recreate compose services"
)


class RecreateServiceParams(ActionParams):
    target: Literal["docker"] = Field("docker", description="the engine at CONTAINERS__DOCKER_URL")
    container: str = Field(
        pattern=_NAME, max_length=128, description="a container of the service: name or ID"
    )
    service: str | None = Field(
        None,
        pattern=_NAME,
        max_length=128,
        description="set by resolve from the container's labels; a caller may only repeat it",
    )
    scope: Literal["service", "project"] | None = Field(
        None,
        description="set by resolve from HARD_REBOOT_SCOPE; a caller may narrow project to service",
    )


def _resource(params: RecreateServiceParams) -> str:
    if params.scope == "project":
        return f"{params.target}/project"
    return f"{params.target}/service/{params.service}"


def resolve_recreate(ctx: CheckContext, params: RecreateServiceParams) -> Resolved:
    """The container's own name, its compose service and the configured scope; refused when
    the hard reboot is off, outside the configured project, for a container compose does not
    manage, for a service or scope the call names wider than configuration allows, for a
    container that is running and healthy, or past MAX_RECREATE containers."""
    cfg = ctx.settings.containers
    if not cfg.hard_reboot:
        raise Refused(_OFF, notice=False)
    container = find_container(ctx, params.container)
    service = container.labels.get(docker_client.SERVICE_LABEL)
    if not service or container.labels.get(docker_client.ONEOFF_LABEL) == "True":
        raise Refused(f"{container.name} is not a container of a compose service; not touched")
    if params.service is not None and params.service != service:
        raise Refused(f"{container.name} belongs to service {service}, not {params.service}")
    if params.scope == "project" and cfg.hard_reboot_scope != "project":
        raise Refused(
            "a hard reboot recreates one service: REMEDIATION_CONTAINERS__HARD_REBOOT_SCOPE"
            " is service"
        )
    scope = params.scope or cfg.hard_reboot_scope
    health = (docker_client.state(container).get("Health") or {}).get("Status")
    if container.status == "running" and health != "unhealthy":
        raise Refused(f"{container.name} is running: nothing to reboot", notice=False)
    names = _members(ctx.settings, service if scope == "service" else None)
    if len(names) > compose.MAX_RECREATE:
        raise Refused(
            f"{len(names)} containers to recreate; a hard reboot recreates at most"
            f" {compose.MAX_RECREATE}"
        )
    facts = {"id": container.id, "status": container.status, "health": health, "containers": names}
    return canonical(params, facts, container=container.name, service=service, scope=scope)


def _members(settings: Settings, service: str | None) -> list[str]:
    project = settings.containers.project or ""
    dc = docker_client.client(settings)
    return sorted(c.name for c in docker_client.compose_containers(dc, project, service))


@action(
    "recreate_service",
    resolve=resolve_recreate,
    resource=_resource,
    cooldown=COOLDOWN,
    max_per_hour=4,
    timeout=timedelta(minutes=15),
)
def recreate_service(ctx: ActionContext, params: RecreateServiceParams) -> ActionResult:
    """Hard reboot: recreate the compose service of a container restarts did not recover.

    Runbook 000 "Docker Management" step 4, `docker compose down && docker compose up -d`.
    Off unless REMEDIATION_CONTAINERS__HARD_REBOOT=true (then a by-hand call is refused and
    the playbook does not ask). For the container's service (its labels
    com.docker.compose.project/service; the whole project with HARD_REBOOT_SCOPE=project):
    stop, rename aside, create from the newest container's configuration (image, command,
    env, labels, networks, mounts, healthcheck) under the same names, start, and only then
    remove the old ones (a new one that will not start puts the old ones back). Never volumes, never
    images, at most compose.MAX_RECREATE containers. Once an hour per service (cooldown).
    Verified: the recreated containers run (and are healthy, with a healthcheck) within
    HARD_REBOOT_WAIT_SECONDS; then restart_container's give-up on them is cleared so it looks
    after the new ones; the check then confirms. Operators are told either way.
    Waits for an approval by default (REMEDIATION_APPROVALS__REQUIRE), with its plan."""
    cfg = ctx.settings.containers
    if not cfg.hard_reboot:  # the configuration may have changed since the call was resolved
        raise Refused(_OFF, notice=False)
    service = params.service if params.scope == "service" else None
    names = _members(ctx.settings, service)
    if len(names) > compose.MAX_RECREATE:
        raise Refused(f"{len(names)} containers to recreate; at most {compose.MAX_RECREATE}")
    granted = ctx.reserve(len(names))  # blast radius: containers recreated per window
    if granted < len(names):
        ctx.give_back(granted)
        raise Deferred(
            f"{len(names)} containers not recreated: the blast-radius cap for recreate_service"
            " is spent",
            guard="blast",
        )
    done = compose.recreate(ctx.settings, cfg.project or "", service)
    up, states = _wait_up(
        ctx.settings, [c["id"] for c in done["created"]], cfg.hard_reboot_wait_seconds
    )
    if up:
        forget_restarts(ctx, *(c["name"] for c in done["removed"]))
    what = f"{cfg.project}/{service}" if service else f"project {cfg.project}"
    summary = f"hard reboot of {what}: recreated {len(done['created'])} container(s); " + (
        "all running" if up else f"not all running after {cfg.hard_reboot_wait_seconds}s"
    )
    return ActionResult(
        summary=summary,
        detail={**done, "came_up": up, "states": states},
        follow_up=[_notice(ctx, params, summary, up)],
    )


def _wait_up(settings: Settings, ids: list[str], seconds: float) -> tuple[bool, dict[str, str]]:
    """Whether every container runs (and is healthy, with a healthcheck) within seconds and
    keeps doing so, unrestarted, for STABLE_SECONDS; and each one's last state."""
    deadline = time.monotonic() + seconds + STABLE_SECONDS
    stable_since, last = None, None
    while True:
        seen = _states(settings, ids)
        up = all(st in ("running", "healthy") for st, _ in seen.values())
        starts = {name: started for name, (_, started) in seen.items()}
        if not up:
            stable_since = None
        elif stable_since is None or starts != last:  # (re)started: the period starts again
            stable_since = time.monotonic()
        last = starts
        states = {name: st for name, (st, _) in seen.items()}
        if stable_since is not None and time.monotonic() - stable_since >= STABLE_SECONDS:
            return True, states
        if time.monotonic() >= deadline:
            return False, states
        time.sleep(POLL_SECONDS)


def _states(settings: Settings, ids: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (running/healthy/starting/unhealthy/exited..., when it last started)."""
    dc = docker_client.client(settings)
    out = {}
    for cid in ids:
        try:
            c = dc.containers.get(cid)
        except docker_client.ERRORS:
            out[cid[:12]] = ("missing", "")
            continue
        st = docker_client.state(c)
        health = (st.get("Health") or {}).get("Status")
        shown = health if c.status == "running" and health else c.status
        out[c.name] = (shown, str(st.get("StartedAt", "")))
    return out


def _notice(ctx: ActionContext, params: RecreateServiceParams, summary: str, up: bool) -> FollowUp:
    incident = ctx.trigger.incident if ctx.trigger else f"recreate_service:{_resource(params)}"
    return FollowUp(
        action="notify",
        params={
            "text": summary,
            "incident": incident,
            "kind": "hard_reboot",
            "severity": "warning" if up else "high",
        },
    )
