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

from docker.errors import NotFound
from pydantic import Field

from remediation.clients import docker as docker_client
from remediation.context import ActionContext
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.settings import ContainerSettings

KEY_PREFIX = "rem:restart:"
STOP_TIMEOUT_SECONDS = 10
"""Grace between SIGTERM and SIGKILL when a running (unhealthy) container is restarted."""
_CONTAINER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


class ContainerParams(ActionParams):
    target: Literal["docker"] = Field("docker", description="the engine at CONTAINERS__DOCKER_URL")
    container: str = Field(pattern=_CONTAINER_NAME, max_length=128, description="container name")


def state_key(container: str) -> str:
    """The Redis hash holding a container's restart history and back-off."""
    return KEY_PREFIX + container


def _resource(params: ContainerParams) -> str:
    return f"{params.target}/{params.container}"


def _now(ctx: ActionContext) -> float:
    seconds, micros = ctx.state.time()
    return float(seconds) + micros / 1e6


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def backoff_seconds(cfg: ContainerSettings, restarts: int) -> int:
    """Wait after the n-th restart in the window: base, doubling, capped (CrashLoopBackOff)."""
    return int(min(cfg.restart_backoff_base_seconds * 2 ** max(restarts - 1, 0),
                   cfg.restart_backoff_max_seconds))  # fmt: skip


@action("restart_container", resource=_resource, cooldown=timedelta(0), max_per_hour=60)
def restart_container(ctx: ActionContext, params: ContainerParams) -> ActionResult:
    """Restart a down or unhealthy container of the watched compose project, backing off.

    Runbook 000 "containers unresponsive or crashed: restart service". Like Kubernetes'
    CrashLoopBackOff: after a restart the next one waits
    REMEDIATION_CONTAINERS__RESTART_BACKOFF_BASE_SECONDS, doubling up to _MAX_SECONDS; a
    request inside the wait changes nothing. After FLAP_MAX_RESTARTS restarts within
    FLAP_WINDOW_SECONDS the container is left alone and the action fails once (the
    operator is told); later requests change nothing until an operator runs
    reset_container_restarts (or `redis-cli DEL rem:restart:<container>`). A container
    that is running and not unhealthy is left as it is. Only containers labelled with
    the project are touched."""
    cfg = ctx.settings.containers
    key = state_key(params.container)
    saved = {_text(k): _text(v) for k, v in ctx.state.hgetall(key).items()}
    if "unmonitored_at" in saved:
        at = _iso(float(saved["unmonitored_at"]))
        return ActionResult(changed=False, detail={"unmonitored_at": at},
                            summary=f"{params.container} left alone, escalated at {at}; "
                                    f"reset_container_restarts to look after it again")  # fmt: skip
    container, refusal = _find(ctx, params)
    if refusal is not None:
        return refusal
    st = docker_client.state(container)
    health = (st.get("Health") or {}).get("Status")
    if container.status == "running" and health != "unhealthy":
        return ActionResult(changed=False, summary=f"{params.container} is running",
                            detail={"status": container.status, "health": health})  # fmt: skip
    now = _now(ctx)
    history = [
        t for t in json.loads(saved.get("history", "[]")) if now - t < cfg.flap_window_seconds
    ]
    if len(history) >= cfg.flap_max_restarts:
        return _give_up(ctx, params, key, now, history)
    next_at = float(saved.get("next_at", 0))
    if now < next_at:
        wait = round(next_at - now, 1)
        return ActionResult(changed=False, detail={"retry_in_seconds": wait,
                                                   "restarts_in_window": len(history)},
                            summary=f"{params.container} is backing off: next restart "
                                    f"allowed in {wait}s")  # fmt: skip
    if ctx.reserve(1) < 1:  # blast radius: containers restarted per window, all workers
        return ActionResult(changed=False, detail={"blast_radius": "cap reached"},
                            summary=f"{params.container} not restarted: the blast-radius cap "
                                    f"for restart_container is spent")  # fmt: skip
    return _restart(ctx, params, container, key, now, history, status=container.status,
                    health=health)  # fmt: skip


def _find(ctx: ActionContext, params: ContainerParams) -> tuple[Any, ActionResult | None]:
    project = ctx.settings.containers.project
    if not project:
        return None, ActionResult(ok=False, changed=False,
                                  summary="no compose project: set REMEDIATION_CONTAINERS__PROJECT")  # fmt: skip
    dc = docker_client.client(ctx.settings)
    try:
        container = dc.containers.get(params.container)
    except NotFound:
        return None, ActionResult(ok=False, changed=False,
                                  summary=f"no container named {params.container}")  # fmt: skip
    if container.labels.get(docker_client.PROJECT_LABEL) != project:
        return None, ActionResult(ok=False, changed=False,
                                  summary=f"{params.container} is not part of compose project "
                                          f"{project}; not touched")  # fmt: skip
    return container, None


def _give_up(ctx: ActionContext, params: ContainerParams, key: str, now: float,
             history: list[float]) -> ActionResult:  # fmt: skip
    cfg = ctx.settings.containers
    ctx.state.hset(key, mapping={"unmonitored_at": now, "history": json.dumps(history)})
    ctx.state.persist(key)  # stays until an operator clears it
    return ActionResult(ok=False, changed=False,
                        detail={"restarts_in_window": len(history), "unmonitored_at": _iso(now),
                                "reset": f"reset_container_restarts or redis-cli DEL {key}"},
                        summary=f"{params.container} was restarted {len(history)} times within "
                                f"{cfg.flap_window_seconds}s and still dies: left alone "
                                f"(unmonitored) until an operator resets it")  # fmt: skip


def _restart(ctx: ActionContext, params: ContainerParams, container: Any, key: str, now: float,
             history: list[float], **was: Any) -> ActionResult:  # fmt: skip
    cfg = ctx.settings.containers
    container.restart(timeout=STOP_TIMEOUT_SECONDS)
    history.append(now)
    delay = backoff_seconds(cfg, len(history))
    ctx.state.hset(key, mapping={"history": json.dumps(history), "next_at": now + delay})
    ctx.state.expire(key, cfg.flap_window_seconds + cfg.restart_backoff_max_seconds)
    container.reload()
    return ActionResult(summary=f"restarted {params.container} (restart {len(history)} within "
                                f"{cfg.flap_window_seconds}s); next one allowed after {delay}s",
                        detail={**was, "status_after": container.status,
                                "restarts_in_window": len(history), "backoff_seconds": delay,
                                "next_allowed_at": _iso(now + delay)})  # fmt: skip


class ResetRestartsParams(ActionParams):
    target: Literal["docker"] = Field("docker", description="the engine at CONTAINERS__DOCKER_URL")
    container: str = Field(pattern=_CONTAINER_NAME, max_length=128, description="container name")


@action(
    "reset_container_restarts",
    resource=lambda p: f"{p.target}/{p.container}",
    breaker=False,
    verify=False,
)
def reset_container_restarts(ctx: ActionContext, params: ResetRestartsParams) -> ActionResult:
    """Forget a container's restart history and back-off, and look after it again.

    For the operator, after fixing a container restart_container gave up on (flap guard):
    `celery -A remediation call remediation.act.reset_container_restarts
    --kwargs '{"container": "NAME"}'`. Same as `redis-cli DEL rem:restart:NAME`."""
    removed = int(ctx.state.delete(state_key(params.container)))
    return ActionResult(changed=bool(removed),
                        summary=f"restart history of {params.container} "
                                + ("cleared" if removed else "was already empty"))  # fmt: skip
