"""Runbook 000 "Docker management: restart the service", with CrashLoopBackOff and a flap guard.

State per container lives in one hash in the state Redis, ``rem:restart:<container>``:
recent restart times, when the next restart is allowed, and whether the container was
given up on (``unmonitored_at``). Times come from the Redis server's clock, shared by
every worker. `redis-cli DEL rem:restart:<container>` (or the reset_container_restarts
action) lets the worker look after a container it gave up on again.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from docker.errors import APIError, NotFound
from pydantic import Field

from remediation.clients import docker as docker_client
from remediation.clients.redis import text
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Deferred, Refused
from remediation.findings import ActionResult
from remediation.guards import keys as guard_keys
from remediation.params import ActionParams
from remediation.plans import Plan, item, plan_of
from remediation.registry import action
from remediation.resolve import canonical
from remediation.restarts import REQUESTED_FIELD, state_key
from remediation.settings import ContainerSettings

STOP_TIMEOUT_SECONDS = 10
"""Grace between SIGTERM and SIGKILL when a running (unhealthy) container is restarted."""


class ContainerParams(ActionParams):
    target: Literal["docker"] = Field("docker", description="the engine at CONTAINERS__DOCKER_URL")
    container: str = Field(
        pattern=docker_client.CONTAINER_NAME, max_length=128, description="container name"
    )


def _resource(params: ContainerParams | ResetRestartsParams) -> str:
    return f"{params.target}/{params.container}"


def _now(ctx: CheckContext) -> float:
    seconds, micros = ctx.state.time()
    return float(seconds) + float(micros) / 1e6


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def backoff_seconds(cfg: ContainerSettings, restarts: int) -> int:
    """Wait after the n-th restart in the window: base, doubling, capped (CrashLoopBackOff)."""
    doubled = cfg.restart_backoff_base_seconds * 2 ** max(restarts - 1, 0)
    return int(min(doubled, cfg.restart_backoff_max_seconds))


def _saved(ctx: CheckContext, name: str) -> dict[str, str]:
    return {text(k): text(v) for k, v in ctx.state.hgetall(state_key(name)).items()}


def _left_alone(name: str, saved: dict[str, str]) -> Refused:
    at = _iso(float(saved["unmonitored_at"]))
    return Refused(
        f"{name} was left alone after repeated restarts, escalated at {at};"
        f" reset_container_restarts to look after it again",
        notice=False,
    )


def find_container(ctx: CheckContext, ref: str) -> Any:
    """The container a name, full ID or ID prefix names, if it belongs to the configured
    compose project; Refused otherwise (never another project: no kwarg names one)."""
    project = ctx.settings.containers.project
    if not project:
        raise Refused("no compose project: set REMEDIATION_CONTAINERS__PROJECT")
    try:
        container = docker_client.client(ctx.settings).containers.get(ref)
    except NotFound:
        raise Refused(f"no container named {ref}") from None
    except APIError as exc:  # an ambiguous ID prefix, a malformed reference
        raise Refused(f"{ref} names no single container: {exc.explanation or exc}") from None
    if container.labels.get(docker_client.PROJECT_LABEL) != project:
        raise Refused(f"{ref} is not part of compose project {project}; not touched")
    return container


def _history(ctx: CheckContext, saved: dict[str, str], now: float | None = None) -> list[float]:
    """Restart times within the flap window."""
    now = _now(ctx) if now is None else now
    window = ctx.settings.containers.flap_window_seconds
    return [t for t in json.loads(saved.get("history", "[]")) if now - t < window]


def _due(ctx: CheckContext, name: str, saved: dict[str, str]) -> None:
    """Deferred while the container's back-off runs (CrashLoopBackOff)."""
    next_at = float(saved.get("next_at", 0))
    now = _now(ctx)
    if now < next_at:
        raise Deferred(
            f"{name} is backing off: next restart allowed in {round(next_at - now, 1)}s",
            retry_at=next_at,
        )


def resolve_container(ctx: CheckContext, params: ContainerParams) -> Resolved:
    """The container's own name (from a name, full ID or ID prefix) and full ID; refused
    outside the project, when left alone, or when it is running and healthy; deferred inside
    its back-off. Every guard and the back-off state are keyed on the canonical name."""
    container = find_container(ctx, params.container)
    name = container.name
    saved = _saved(ctx, name)
    if "unmonitored_at" in saved:
        raise _left_alone(name, saved)
    health = (docker_client.state(container).get("Health") or {}).get("Status")
    if container.status == "running" and health != "unhealthy" and REQUESTED_FIELD not in saved:
        raise Refused(f"{name} is running", notice=False)
    if len(_history(ctx, saved)) < ctx.settings.containers.flap_max_restarts:
        _due(ctx, name, saved)  # at the flap limit the action gives up now, not after the wait
    facts = {"id": container.id, "status": container.status, "health": health}
    return canonical(params, facts, container=name)


def container_key(container: Any) -> str:
    """A container as a plan names it: its full ID, which a restart keeps (a container
    re-created under the same name is another one, and not approved)."""
    return f"container:{container.id}"


def plan_restart(ctx: CheckContext, params: ContainerParams) -> Plan:
    """The container a restart would hit (read-only): name, short ID, state, health, the
    engine's restart count and this worker's restarts within the flap window."""
    container = find_container(ctx, params.container)
    st = docker_client.state(container)
    health = (st.get("Health") or {}).get("Status")
    in_window = len(_history(ctx, _saved(ctx, container.name)))
    what = (
        f"restart {container.name} ({container.short_id}), {container.status}"
        + (f" and {health}" if health else "")
        + f"; restarted {in_window} time(s) within the flap window"
    )
    detail = {
        "name": container.name,
        "short_id": container.short_id,
        "status": container.status,
        "health": health,
        "engine_restart_count": container.attrs.get("RestartCount"),
        "restarts_in_window": in_window,
    }
    return plan_of(what, [item(container_key(container), what, **detail)])


@action(
    "restart_container",
    resolve=resolve_container,
    resource=_resource,
    plan=plan_restart,
    cooldown=timedelta(0),
    max_per_hour=60,
    escalate_unverified=False,
)
def restart_container(ctx: ActionContext, params: ContainerParams) -> ActionResult:
    """Restart a down or unhealthy container of the watched compose project, backing off.

    Runbook 000 "containers unresponsive or crashed: restart service". Like Kubernetes'
    CrashLoopBackOff: after a restart the next one waits
    REMEDIATION_CONTAINERS__RESTART_BACKOFF_BASE_SECONDS, doubling up to _MAX_SECONDS; a
    request inside the wait is deferred (audited, the incident stays open, the first sweep
    after the wait restarts). After FLAP_MAX_RESTARTS restarts within FLAP_WINDOW_SECONDS
    the container is left alone and the action fails once (the operator is told); later
    requests are refused until an operator runs reset_container_restarts (or `redis-cli DEL
    rem:restart:<name>`). A container that is running and not unhealthy is left as it is,
    unless the worker itself asked for its restart (enable_log_scrubbing changed its config).
    Only containers labelled with REMEDIATION_CONTAINERS__PROJECT are touched; a name, full
    ID or ID prefix all mean the same container and share one back-off."""
    cfg = ctx.settings.containers
    name = params.container  # canonical: resolve_container
    key = state_key(name)
    saved = _saved(ctx, name)
    if "unmonitored_at" in saved:
        raise _left_alone(name, saved)
    container = find_container(ctx, ctx.facts.get("id") or name)
    if container.name != name:  # replaced under the same name since resolve: look again
        raise Deferred(f"{name} was replaced since the call was resolved", retry_at=None)
    if not ctx.approves(container_key(container)):  # re-created since it was approved
        raise Refused(f"{name} ({container.short_id}) is not the container approved", notice=False)
    st = docker_client.state(container)
    health = (st.get("Health") or {}).get("Status")
    if container.status == "running" and health != "unhealthy" and REQUESTED_FIELD not in saved:
        raise Refused(f"{name} is running", notice=False)
    now = _now(ctx)
    history = _history(ctx, saved, now)
    if len(history) >= cfg.flap_max_restarts:
        return _give_up(ctx, name, key, now, history)
    _due(ctx, name, saved)
    if ctx.reserve(1) < 1:  # blast radius: containers restarted per window, all workers
        raise Deferred(
            f"{name} not restarted: the blast-radius cap for restart_container is spent",
            guard="blast",
        )
    return _restart(ctx, name, container, key, now, history, status=container.status, health=health)


def _give_up(
    ctx: ActionContext, name: str, key: str, now: float, history: list[float]
) -> ActionResult:
    cfg = ctx.settings.containers
    ctx.state.hset(key, mapping={"unmonitored_at": now, "history": json.dumps(history)})
    ctx.state.persist(key)  # stays until an operator clears it
    return ActionResult(
        ok=False,
        changed=False,
        detail={
            "restarts_in_window": len(history),
            "unmonitored_at": _iso(now),
            "reset": f"reset_container_restarts or redis-cli DEL {key}",
        },
        summary=(
            f"{name} was restarted {len(history)} times within "
            f"{cfg.flap_window_seconds}s and still dies: left alone "
            f"(unmonitored) until an operator resets it"
        ),
    )


def _restart(
    ctx: ActionContext,
    name: str,
    container: Any,
    key: str,
    now: float,
    history: list[float],
    **was: Any,
) -> ActionResult:
    cfg = ctx.settings.containers
    container.restart(timeout=STOP_TIMEOUT_SECONDS)
    history.append(now)
    delay = backoff_seconds(cfg, len(history))
    ctx.state.hset(key, mapping={"history": json.dumps(history), "next_at": now + delay})
    ctx.state.hdel(key, REQUESTED_FIELD)  # the restart asked for (a changed config) is done
    ctx.state.expire(key, cfg.flap_window_seconds + cfg.restart_backoff_max_seconds)
    container.reload()
    return ActionResult(
        summary=(
            f"restarted {name} (restart {len(history)} within "
            f"{cfg.flap_window_seconds}s); next one allowed after {delay}s"
        ),
        detail={
            **was,
            "id": container.id,
            "status_after": container.status,
            "restarts_in_window": len(history),
            "backoff_seconds": delay,
            "next_allowed_at": _iso(now + delay),
        },
    )


class ResetRestartsParams(ActionParams):
    target: Literal["docker"] = Field("docker", description="the engine at CONTAINERS__DOCKER_URL")
    container: str = Field(
        pattern=docker_client.CONTAINER_NAME, max_length=128, description="container name"
    )


def resolve_reset(ctx: CheckContext, params: ResetRestartsParams) -> Resolved:
    """The container's own name; a container that is gone is named by the state it left."""
    try:
        container = find_container(ctx, params.container)
    except Refused:
        if not ctx.state.exists(state_key(params.container)):
            raise
        return canonical(params, {"gone": True})
    return canonical(params, {"id": container.id}, container=container.name)


@action(
    "reset_container_restarts",
    resolve=resolve_reset,
    resource=_resource,
    breaker=False,
    verify=False,
)
def reset_container_restarts(ctx: ActionContext, params: ResetRestartsParams) -> ActionResult:
    """Forget a container's restart history and back-off, and look after it again.

    For the operator, after fixing a container restart_container gave up on (flap guard):
    `celery -A remediation call remediation.act.reset_container_restarts
    --kwargs '{"container": "NAME"}'` (name, full ID or ID prefix). Clears the container's
    back-off state (rem:restart:<name>) and the guard chain's flap record for
    restart_container on it, so both flap guards start afresh."""
    removed = forget_restarts(ctx, params.container)
    outcome = "cleared" if removed else "was already empty"
    return ActionResult(
        changed=bool(removed), summary=f"restart history of {params.container} {outcome}"
    )


def forget_restarts(ctx: CheckContext, *names: str) -> int:
    """Delete the containers' back-off state and restart_container's flap records on them
    (the chain's and the action's own): it looks after them afresh. How many keys went."""
    doomed = [state_key(n) for n in names]
    for name in names:
        resource = f"docker/{name}"
        doomed += [
            guard_keys.flap("restart_container", resource),
            guard_keys.flap_suspended("restart_container", resource),
        ]
    return int(ctx.state.delete(*doomed)) if doomed else 0
