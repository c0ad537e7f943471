"""Pause and resume low-priority Celery queues (runbook 001 "System Overload: reduce load:
pause non-critical scraping").

The queue is this worker's own Celery cluster's (target "self"); workers are told through
remote control (remediation.celery_cluster) to cancel or re-add their consumer, and the
pause is recorded with its expiry in rem:paused_queue:<queue> on the state Redis
(remediation.throttles). celery_paused_queues reports it once due, and the playbook runs
resume_low_priority.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from pydantic import Field

from remediation.celery_cluster import OWN_QUEUE, consumers, own_app
from remediation.clients.redis import text
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical, self_target
from remediation.throttles import (
    CONTROL_TIMEOUT,
    NAME_PATTERN,
    PAUSED_INDEX,
    changed_by,
    due,
    iso,
    paused_key,
)

CONFIRM_SECONDS = 5.0
"""Seconds to wait until acknowledging workers show the change in active_queues."""


class QueueParams(ActionParams):
    """target: always "self", the Celery cluster this worker belongs to."""


class PauseLowPriorityParams(QueueParams):
    pass


class ResumeLowPriorityParams(QueueParams):
    queue: str | None = Field(
        None, pattern=NAME_PATTERN, max_length=64, description="default: LOW_PRIORITY_QUEUE"
    )
    force: bool = Field(False, description="resume now, before the pause is due to end")


def _pause_resource(params: QueueParams) -> str:
    queue = getattr(params, "queue", None) or "(low-priority queue)"
    return f"celery/{queue}"


def _consumers(app: Any, queue: str, destination: list[str] | None = None) -> list[str]:
    return consumers(app, [queue], destination, timeout=CONTROL_TIMEOUT)


def _acknowledged(replies: list[dict[str, Any]] | None) -> list[str]:
    return sorted(w for reply in replies or () for w, body in reply.items() if "ok" in body)


def _confirm(app: Any, queue: str, workers: list[str], consuming: bool) -> list[str]:
    """Workers whose active_queues show the change, polled for up to CONFIRM_SECONDS."""
    deadline = time.monotonic() + CONFIRM_SECONDS
    while True:
        now = set(_consumers(app, queue, workers)) if workers else set()
        done = sorted(w for w in workers if (w in now) == consuming)
        if len(done) == len(workers) or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def _record(client: Any, queue: str) -> dict[str, str]:
    return {text(k): text(v) for k, v in client.hgetall(paused_key(queue)).items()}


def _own_cluster(params: QueueParams) -> str:
    return self_target(params.target, "queues are paused on this worker's own Celery cluster")


def resolve_pause(ctx: CheckContext, params: PauseLowPriorityParams) -> Resolved:
    """Target "self"; refused when the low-priority queue is the remediation worker's own
    (nothing could resume it)."""
    target = _own_cluster(params)
    queue = ctx.settings.rate_limits.low_priority_queue
    if queue == OWN_QUEUE:
        raise Refused(f"{queue!r} is the remediation worker's own queue; nothing could resume it")
    return canonical(params, target=target)


def resolve_resume(ctx: CheckContext, params: ResumeLowPriorityParams) -> Resolved:
    """Target "self" and the queue: the configured low-priority queue (default) or one
    pause_low_priority recorded in PAUSED_INDEX. Refused for another queue; quietly when
    the queue is not paused (nothing to resume)."""
    target = _own_cluster(params)
    configured = ctx.settings.rate_limits.low_priority_queue
    queue = configured if params.queue is None else params.queue
    state = ctx.state
    if queue != configured and not state.sismember(PAUSED_INDEX, queue):
        raise Refused(
            f"queue {queue!r} is neither REMEDIATION_RATE_LIMITS__LOW_PRIORITY_QUEUE"
            f" ({configured!r}) nor one paused by remediation"
        )
    if not state.exists(paused_key(queue)):
        raise Refused(f"{queue!r} is not paused by remediation: nothing to resume", notice=False)
    return canonical(params, target=target, queue=queue)


@action(
    "pause_low_priority",
    resolve=resolve_pause,
    resource=_pause_resource,
    cooldown=timedelta(minutes=5),
    max_per_hour=6,
    verify=False,
)
def pause_low_priority(ctx: ActionContext, params: PauseLowPriorityParams) -> ActionResult:
    """Stop consuming the low-priority queue for a while (runbook 001 "System Overload:
    reduce load: pause non-critical scraping").

    Workers consuming REMEDIATION_RATE_LIMITS__LOW_PRIORITY_QUEUE are told to cancel
    their consumer (Celery remote control); messages wait in the queue, none is lost. The
    workers and an expiry PAUSE_SECONDS out are recorded in rem:paused_queue:<queue>;
    celery_paused_queues reports celery_queue_pause_expired then, and resume_low_priority
    re-adds the consumer on exactly those workers. Run again while paused, it pauses
    workers that started consuming since, without moving the expiry. Never the
    remediation worker's own queue."""
    resolve_pause(ctx, params)  # no I/O: a direct call is held to it too
    queue = ctx.settings.rate_limits.low_priority_queue
    app = own_app(ctx.settings)
    state: Any = ctx.state  # the record's str mapping is not redis-py's hset key union
    found = _consumers(app, queue)
    existing = _record(state, queue)
    already = json.loads(existing.get("workers", "[]"))
    if not found:
        summary = "still paused" if existing else f"no worker consumes {queue!r}"
        return ActionResult(
            changed=False,
            summary=f"{summary}; nothing to pause",
            detail={"queue": queue, "workers": already},
        )
    now = time.time()
    expires = existing.get("expires_at") or repr(now + ctx.settings.rate_limits.pause_seconds)
    record = {
        "workers": json.dumps(sorted(set(already) | set(found))),
        "expires_at": expires,
        "paused_at": existing.get("paused_at") or repr(now),
        "by": changed_by(ctx),
    }
    state.hset(paused_key(queue), mapping=record)  # first: a crash after the cancel still resumes
    state.sadd(PAUSED_INDEX, queue)
    replies = app.control.cancel_consumer(
        queue, destination=found, reply=True, timeout=CONTROL_TIMEOUT
    )
    acked = _acknowledged(replies)
    confirmed = _confirm(app, queue, acked, consuming=False)
    detail = {
        "queue": queue,
        "consumers": found,
        "acknowledged": acked,
        "confirmed": confirmed,
        "missing": sorted(set(found) - set(acked)),
        "resume_at": iso(expires),
    }
    return ActionResult(
        ok=bool(acked),
        changed=bool(acked),
        detail=detail,
        summary=(
            f"paused {queue!r} on {len(acked)} of {len(found)} worker(s)"
            f" until {detail['resume_at']}"
        ),
    )


@action("resume_low_priority", resolve=resolve_resume, resource=_pause_resource, max_per_hour=30)
def resume_low_priority(ctx: ActionContext, params: ResumeLowPriorityParams) -> ActionResult:
    """Consume the paused queue again on the workers pause_low_priority paused, once due.

    A recorded worker that does not answer is asked for a ping: one that is gone is
    forgotten (restarted workers consume their -Q queues anyway); one that answers but
    did not take the consumer keeps the record, so the next sweep tries again. Verified by
    celery_paused_queues no longer reporting the pause."""
    queue = params.queue or ctx.settings.rate_limits.low_priority_queue
    state = ctx.state
    record = _record(state, queue)
    if not record:  # resumed by another call since the resolve step
        raise Refused(f"{queue!r} is not paused by remediation: nothing to resume", notice=False)
    if not params.force and not due(record, time.time()):
        return ActionResult(
            changed=False,
            summary=(
                f"{queue!r} stays paused until"
                f" {iso(record['expires_at'])} (use force to resume now)"
            ),
        )
    workers = json.loads(record.get("workers", "[]"))
    app = own_app(ctx.settings)
    replies = (
        app.control.add_consumer(queue, destination=workers, reply=True, timeout=CONTROL_TIMEOUT)
        if workers
        else []
    )
    acked = _acknowledged(replies)
    silent = sorted(set(workers) - set(acked))
    alive = (
        _acknowledged(app.control.ping(destination=silent, timeout=CONTROL_TIMEOUT))
        if silent
        else []
    )
    if alive:
        state.hset(paused_key(queue), "workers", json.dumps(alive))
    else:
        state.delete(paused_key(queue))
        state.srem(PAUSED_INDEX, queue)
    confirmed = _confirm(app, queue, acked, consuming=True)
    detail = {
        "queue": queue,
        "workers": workers,
        "acknowledged": acked,
        "confirmed": confirmed,
        "gone": sorted(set(silent) - set(alive)),
        "retry": alive,
    }
    summary = f"resumed {queue!r} on {len(acked)} of {len(workers)} worker(s)"
    if alive:
        summary += f"; {len(alive)} answered pings but not the resume"
    return ActionResult(ok=not alive, changed=bool(acked), detail=detail, summary=summary)
