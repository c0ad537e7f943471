"""Resize worker pools and revoke stuck tasks on the monitored Celery cluster (runbook 002
"queue depth > 1000: scale workers", "stuck jobs"; runbook 004 "scale workers"; runbook
001 "System Overload: scale resources").

Scaling up is prompt; scaling down waits until the scale target's queues have been quiet
for REMEDIATION_WORKERS__SCALE_DOWN_STABILIZATION_SECONDS (the Kubernetes HPA's
stabilization window), remembered in rem:scale:<name> on the state Redis. Sizes never
leave [min, max] of the scale target.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field

from remediation.celery_cluster import (
    CLUSTER,
    CONTROL_TIMEOUT,
    ClusterName,
    busy,
    monitor_app,
    pool_sizes,
    queue_depths,
    scale_key,
    scale_workers_of,
    stuck_tasks,
)
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Deferred, Refused, TargetError
from remediation.findings import ActionResult
from remediation.params import ActionParams, TargetName
from remediation.plans import Plan, item, plan_of
from remediation.registry import action
from remediation.resolve import canonical
from remediation.settings import ScaleTarget, Settings

CONFIRM_SECONDS = 10.0
"""Seconds to wait until workers' stats (or the replicas) show the new size."""
INSPECT_TIMEOUT = 3.0
"""Seconds revoke_stuck_tasks waits for active-task lists (longer than the check's)."""
_POLL = 0.25


class ScaleWorkersParams(ActionParams):
    target: TargetName = Field(description="a scale target in REMEDIATION_WORKERS__SCALE_TARGETS")
    direction: Literal["up", "down"]


class RevokeStuckTasksParams(ActionParams):
    target: ClusterName = Field(CLUSTER, description="always 'celery' (REMEDIATION_WORKERS__*)")


def scale_target(settings: Settings, name: str) -> ScaleTarget:
    """The configured scale target: the exact name, else the only one that matches
    case-insensitively; TargetError (listing the known ones) when none or several do."""
    targets = settings.workers.scale_targets
    for target in targets:
        if target.name == name:
            return target
    similar = [t for t in targets if t.name.lower() == name.lower()]
    if len(similar) == 1:
        return similar[0]
    known = ", ".join(t.name for t in targets) or "none"
    why = "several scale targets match" if similar else "no scale target"
    raise TargetError(f"{why} {name!r} in REMEDIATION_WORKERS__SCALE_TARGETS ({known})")


def resolve_scale(ctx: CheckContext, params: ScaleWorkersParams) -> Resolved:
    """The scale target's configured name; Refused (listing the known ones) if none."""
    try:
        target = scale_target(ctx.settings, params.target)
    except TargetError as exc:
        raise Refused(str(exc)) from None
    return canonical(params, target=target.name)


def _may_revoke(settings: Settings) -> None:
    if not settings.workers.revoke_stuck:
        raise Refused(
            "revoking stuck tasks is opt-in: set REMEDIATION_WORKERS__REVOKE_STUCK=true",
            notice=False,
        )


def resolve_revoke(ctx: CheckContext, params: RevokeStuckTasksParams) -> Resolved:
    """Refused (quietly: configuration, not an incident) unless revoking is switched on."""
    _may_revoke(ctx.settings)
    return Resolved(params)


def _by(ctx: ActionContext) -> str:
    return f"incident {ctx.trigger.incident}" if ctx.trigger else "by hand"


def _clamp(size: int, direction: str, target: ScaleTarget) -> int:
    """One step toward the bound; a pool already outside [min, max] never moves away from it."""
    if direction == "up":
        return max(size, min(target.max, size + target.step))
    return min(size, max(target.min, size - target.step))


def _hold(ctx: ActionContext, target: ScaleTarget, now: float) -> None:
    """Deferred while a scale-down must wait: a backlog, or the stabilization window (the
    incident stays open; the first sweep after the window scales down)."""
    state = ctx.state
    depths = queue_depths(ctx.settings, target.queues) or {}
    totals = {q: sum(d.values()) for q, d in depths.items()}
    window = ctx.settings.workers.scale_down_stabilization_seconds
    if any(busy(ctx.settings, n) for n in totals.values()):
        state.hset(scale_key(target.name), "last_busy", repr(now))
        raise Deferred(
            f"{target.name}: not scaling down, its queues still hold a backlog {totals}",
            retry_at=now + window,
            guard="stabilization",
        )
    record = state.hmget(scale_key(target.name), ["last_busy", "last_up"])
    since = max((float(v) for v in record if v is not None), default=0.0)
    left = since + window - now
    if left > 0:
        raise Deferred(
            f"{target.name}: scale-down held for another {left:.0f} s (busy or scaled up"
            f" {now - since:.0f} s ago; window {window} s)",
            retry_at=since + window,
            guard="stabilization",
        )


def _confirm(app: Any, wanted: dict[str, int]) -> dict[str, int | None]:
    """Pool sizes polled until every worker shows its wanted size, or CONFIRM_SECONDS pass."""
    deadline = time.monotonic() + CONFIRM_SECONDS
    while True:
        sizes = pool_sizes(app, list(wanted))
        if all(sizes[w] == n for w, n in wanted.items()) or time.monotonic() > deadline:
            return sizes
        time.sleep(_POLL)


def _reply(replies: list[dict[str, Any]] | None, worker: str) -> str:
    for reply in replies or ():
        if worker in reply:
            body = reply[worker]
            return str(body.get("ok") or body.get("error") or body)
    return "no reply"


def _scale_celery(ctx: ActionContext, target: ScaleTarget, direction: str) -> ActionResult:
    app = monitor_app(ctx.settings)
    workers = scale_workers_of(app, target)
    sizes = pool_sizes(app, workers) if workers else {}
    sized = {w: n for w, n in sizes.items() if n is not None}
    if not sized:
        return ActionResult(
            ok=False,
            changed=False,
            detail={"workers": sizes},
            summary=(
                f"{target.name}: no worker with a resizable pool answered"
                f" (consuming {target.queues})"
            ),
        )
    wanted = {w: _clamp(n, direction, target) for w, n in sized.items()}
    moving = {w: n for w, n in wanted.items() if n != sized[w]}
    if not moving:
        return _at_bound(target, direction, sized)
    _blast(ctx, target, sum(n - sized[w] for w, n in moving.items()))
    command = app.control.pool_grow if direction == "up" else app.control.pool_shrink
    replies = {
        w: _reply(
            command(abs(n - sized[w]), destination=[w], reply=True, timeout=CONTROL_TIMEOUT), w
        )
        for w, n in moving.items()
    }
    after = _confirm(app, moving)
    confirmed = sorted(w for w, n in moving.items() if after[w] == n)
    detail = {
        "backend": "celery",
        "direction": direction,
        "min": target.min,
        "max": target.max,
        "workers": {
            w: {"before": sized[w], "wanted": n, "after": after[w], "reply": replies[w]}
            for w, n in moving.items()
        },
    }
    changes = ", ".join(f"{w} {sized[w]} -> {after[w]}" for w in sorted(moving))
    return ActionResult(
        ok=len(confirmed) == len(moving),
        changed=bool(confirmed),
        detail=detail,
        summary=(
            f"{target.name}: pool {direction} ({changes} processes);"
            f" {len(confirmed)} of {len(moving)} confirmed"
        ),
    )


def _blast(ctx: ActionContext, target: ScaleTarget, added: int) -> None:
    """Workers added count against scale_workers' blast radius (all workers, per window);
    all or nothing, so a scale-up never half happens: deferred until units free up."""
    if added <= 0:
        return
    granted = ctx.reserve(added)
    if granted < added:
        ctx.give_back(granted)
        raise Deferred(
            f"{target.name}: blast-radius cap for scale_workers reached; not adding {added}"
            f" worker(s) now (granted {granted})",
            guard="blast",
        )


def _at_bound(target: ScaleTarget, direction: str, sizes: dict[str, int]) -> ActionResult:
    if direction == "up":  # not ok: the runner escalates, a human decides on more capacity
        return ActionResult(
            ok=False,
            changed=False,
            detail={"sizes": sizes, "max": target.max},
            summary=f"{target.name}: at max ({target.max}); cannot scale up",
        )
    return ActionResult(
        changed=False,
        detail={"sizes": sizes, "min": target.min},
        summary=f"{target.name}: already at min ({target.min}) or below",
    )


def _scale_compose(ctx: ActionContext, target: ScaleTarget, direction: str) -> ActionResult:
    try:
        from remediation.compose import count_replicas, scale_service
    except ImportError:
        return ActionResult(ok=False, changed=False, summary="compose backend not available")
    project, service = target.project or "", target.service or ""  # required for compose
    before = int(count_replicas(ctx.settings, project, service))
    wanted = _clamp(before, direction, target)
    if wanted == before:
        return _at_bound(target, direction, {f"{project}/{service}": before})
    _blast(ctx, target, wanted - before)
    result = scale_service(ctx.settings, project, service, wanted)
    deadline = time.monotonic() + CONFIRM_SECONDS
    while (after := int(count_replicas(ctx.settings, project, service))) != wanted:
        if time.monotonic() > deadline:
            break
        time.sleep(_POLL)
    detail = {
        "backend": "compose",
        "direction": direction,
        "before": before,
        "wanted": wanted,
        "after": after,
        "min": target.min,
        "max": target.max,
        "result": result,
    }
    return ActionResult(
        ok=after == wanted,
        changed=after != before,
        detail=detail,
        summary=(
            f"{target.name}: {project}/{service} {before} -> {after} replicas (wanted {wanted})"
        ),
    )


@action(
    "scale_workers",
    resolve=resolve_scale,
    cooldown=timedelta(seconds=45),
    max_per_hour=20,
    verify=False,
)
def scale_workers(ctx: ActionContext, params: ScaleWorkersParams) -> ActionResult:
    """Grow or shrink a scale target by its step, within [min, max] (runbook 002 "queue depth
    > 1000: scale workers", runbook 004 "scale workers", runbook 001 "scale resources").

    The target names a scale target (exactly, or its only case-insensitive match); any other
    name is refused with the known ones listed. Celery targets: pool_grow / pool_shrink on
    the named worker (or every worker consuming the target's queues), confirmed by counting
    pool processes in the workers' stats. Compose targets: the service's replica count. Up
    is prompt; at max it fails so the incident escalates. Down is held while the target's
    queues hold a backlog and until SCALE_DOWN_STABILIZATION_SECONDS after the last backlog
    or scale-up (rem:scale:<name>); at min it does nothing."""
    target = scale_target(ctx.settings, params.target)
    now = time.time()
    state = ctx.state
    if params.direction == "up":
        state.hset(scale_key(target.name), mapping={"last_busy": repr(now), "by": _by(ctx)})
    else:
        _hold(ctx, target, now)
    if ctx.resumed_since is not None:  # redelivered: did the lost attempt already scale?
        field = "last_up" if params.direction == "up" else "last_down"
        last = state.hget(scale_key(target.name), field)
        if last is not None and float(last) >= ctx.resumed_since:
            return ActionResult(
                changed=True,
                detail={field: float(last)},
                summary=(
                    f"{target.name}: already scaled {params.direction} by the attempt that was lost"
                ),
            )
    scale = _scale_celery if target.backend == "celery" else _scale_compose
    result = scale(ctx, target, params.direction)
    if result.changed:
        field = "last_up" if params.direction == "up" else "last_down"
        state.hset(scale_key(target.name), mapping={field: repr(time.time()), "by": _by(ctx)})
    return result


def task_key(task: dict[str, Any]) -> str:
    """A task as a plan names it: its id (unique per run of a task)."""
    return f"task:{task['id']}"


def _to_revoke(ctx: CheckContext, app: Any) -> tuple[list[str], list[dict[str, Any]], int]:
    """(workers that answered, the stuck tasks a run would revoke now, how many stuck ones
    are left over the per-run cap): the plan and the action share this choice."""
    answered, stuck = stuck_tasks(app, ctx.settings, timeout=INSPECT_TIMEOUT)
    most = ctx.settings.workers.max_revokes_per_run
    return answered, stuck[:most], max(0, len(stuck) - most)


def plan_revoke(ctx: CheckContext, params: RevokeStuckTasksParams) -> Plan:
    """The stuck tasks a run would revoke now (read-only inspect): name, id, worker and
    runtime; never their arguments."""
    _may_revoke(ctx.settings)
    answered, wanted, over = _to_revoke(ctx, monitor_app(ctx.settings))
    items = [
        item(
            task_key(t),
            f"revoke {t['name']}[{t['id']}] on {t['worker']}, running {t['runtime_seconds']:.0f}s"
            f" (limit {t['limit_seconds']:.0f}s)",
            **{k: t[k] for k in ("id", "name", "worker", "runtime_seconds", "limit_seconds")},
        )
        for t in wanted
    ]
    summary = f"revoke {len(items)} stuck task(s) ({len(answered)} worker(s) answered" + (
        f", {over} more over the per-run cap left)" if over else ")"
    )
    return plan_of(summary, items)


@action(
    "revoke_stuck_tasks",
    resolve=resolve_revoke,
    plan=plan_revoke,
    cooldown=timedelta(minutes=5),
    max_per_hour=6,
)
def revoke_stuck_tasks(ctx: ActionContext, params: RevokeStuckTasksParams) -> ActionResult:
    """Terminate tasks that celery_stuck_tasks reports (runbook 002 "stuck jobs"); opt-in with
    REMEDIATION_WORKERS__REVOKE_STUCK=true (otherwise calls are refused, quietly).

    Active tasks are inspected again; at most MAX_REVOKES_PER_RUN of those still stuck are
    revoked with terminate (SIGTERM to the child running it), the longest-running first,
    and confirmed gone from the workers' active lists. The remediator's own tasks
    (remediation.check.*, remediation.act.*) are never candidates. Their arguments are
    never logged."""
    _may_revoke(ctx.settings)  # the resolve step refused already; a direct call is refused too
    app = monitor_app(ctx.settings)
    answered, listed, over = _to_revoke(ctx, app)
    if not answered:  # not the same as "nothing stuck": let the incident escalate
        return ActionResult(ok=False, changed=False, summary="no worker answered inspect")
    # on an approval, only the approved tasks still stuck (none stuck since)
    wanted = [t for t in listed if ctx.approves(task_key(t))]
    not_approved = len(listed) - len(wanted)
    chosen = wanted[: ctx.reserve(len(wanted))]  # blast radius: tasks revoked per window
    if wanted and not chosen:
        return ActionResult(
            changed=False,
            summary="blast-radius cap for revoke_stuck_tasks reached; nothing revoked",
            detail={"stuck": len(listed) + over},
        )
    if not chosen:
        return ActionResult(
            changed=False, summary="no task is stuck any more", detail={"workers": answered}
        )
    ids = [t["id"] for t in chosen]
    app.control.revoke(ids, terminate=True, signal="SIGTERM")
    gone = _confirm_gone(app, chosen)
    left = len(listed) + over - len(chosen)
    detail = {
        "revoked": chosen,
        "confirmed": gone,
        "left_stuck": left,
        "not_approved": not_approved,
    }
    names = ", ".join(f"{t['name']}[{t['id']}]" for t in chosen)
    return ActionResult(
        ok=len(gone) == len(ids),
        changed=bool(gone),
        detail=detail,
        summary=f"revoked {len(ids)} stuck task(s): {names}; {len(gone)} gone",
    )


def _confirm_gone(app: Any, chosen: list[dict[str, Any]]) -> list[str]:
    """Ids their worker answers it no longer runs, polled for up to CONFIRM_SECONDS (a worker
    that does not answer confirms nothing)."""
    workers = sorted({t["worker"] for t in chosen})
    deadline = time.monotonic() + CONFIRM_SECONDS
    while True:
        active = app.control.inspect(timeout=CONTROL_TIMEOUT, destination=workers).active() or {}
        running = {str(t.get("id")) for tasks in active.values() for t in tasks or ()}
        gone = [t["id"] for t in chosen if t["worker"] in active and t["id"] not in running]
        if len(gone) == len(chosen) or time.monotonic() > deadline:
            return gone
        time.sleep(_POLL)
