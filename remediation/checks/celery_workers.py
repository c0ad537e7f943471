"""The monitored Celery cluster: are workers answering, how deep are the queues, is a task
stuck, is a pool bigger than its backlog needs (runbooks 002 "Celery Worker Issues", 004
"Worker Queue Backlog", 001 "System Overload: scale resources"), and the queues
pause_low_priority paused (runbook 001 "System Overload: reduce load").

The cluster is the one on REMEDIATION_WORKERS__BROKER_URL, or this worker's own broker
when that is unset; remediation.celery_cluster reads it (remote control through a small
app bound to that broker; queue depth from the broker: LLEN on Redis, a passive queue
declare on RabbitMQ).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import redis
from kombu.exceptions import OperationalError
from pydantic import Field, field_validator

from remediation.celery_cluster import (
    CLUSTER,
    CONTROL_TIMEOUT,
    ClusterName,
    answering,
    broker_url,
    busy,
    consumers,
    is_redis,
    monitor_app,
    own_app,
    pool_sizes,
    queue_depths,
    reserved,
    scale_key,
    scale_workers_of,
    stuck_tasks,
)
from remediation.clients import redis as redis_clients
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check
from remediation.settings import ScaleTarget, Settings
from remediation.throttles import CONTROL_TIMEOUT as PAUSE_CONTROL_TIMEOUT
from remediation.throttles import PAUSED_INDEX, due, paused_key, records

MIN_GROWTH_SECONDS = 1.0
"""Runs closer together than this do not compute a growth rate (division by almost zero)."""
MAX_STUCK_FINDINGS = 20
"""Stuck tasks reported per run (the longest-running first)."""


class _ClusterParams(CheckParams):
    target: ClusterName = Field(CLUSTER, description="always 'celery' (see REMEDIATION_WORKERS__*)")


class CeleryWorkersParams(_ClusterParams):
    pass


class CeleryQueuesParams(_ClusterParams):
    pass


class CeleryStuckTasksParams(_ClusterParams):
    pass


def _finding(check_name: str, kind: str, severity: Severity, **fields: Any) -> Finding:
    return Finding(check=check_name, target=CLUSTER, kind=kind, severity=severity, **fields)


# --- checks ------------------------------------------------------------------------------


@check("celery_workers")
def celery_workers(ctx: CheckContext, params: CeleryWorkersParams) -> list[Finding]:
    """Do the monitored Celery workers answer a ping (runbook 002 "No workers running: High,
    start workers")?

    No answer within 1.5 s is celery_workers_down (critical); a broker that cannot be
    reached is celery_broker_unreachable (critical). Read-only."""
    try:
        if is_redis(broker_url(ctx.settings)):  # fails in milliseconds, kombu retries for seconds
            redis_clients.client(broker_url(ctx.settings)).ping()
        workers = answering(monitor_app(ctx.settings))
    except (OperationalError, OSError, redis.RedisError) as exc:
        return [
            _finding(
                "celery_workers",
                "celery_broker_unreachable",
                Severity.CRITICAL,
                observed=type(exc).__name__,
                summary=f"the monitored Celery broker is unreachable: {exc}",
            )
        ]
    ctx.log.info("celery workers answering", workers=workers)
    if workers:
        return []
    return [
        _finding(
            "celery_workers",
            "celery_workers_down",
            Severity.CRITICAL,
            observed=0,
            threshold=1,
            evidence={"queues": ctx.settings.workers.queues},
            summary=f"no Celery worker answered a ping within {CONTROL_TIMEOUT} s",
        )
    ]


def _depth_finding(
    settings: Settings, queue: str, by_priority: dict[str, int], extra: dict[str, Any]
) -> Finding | None:
    w = settings.workers
    depth = sum(by_priority.values())
    if depth > w.backlog_high:
        severity, threshold, runbook = Severity.HIGH, w.backlog_high, "002: queue depth > 1000"
    elif depth > w.backlog_warning:
        severity, threshold, runbook = Severity.WARNING, w.backlog_warning, "004: pending > 50"
    else:
        return None
    targets = [t.name for t in w.scale_targets if queue in t.queues]
    return _finding(
        "celery_queues",
        "celery_queue_backlog",
        severity,
        subject=queue,
        observed=depth,
        threshold=threshold,
        evidence={"by_priority": by_priority, "scale_targets": targets, **extra},
        summary=f"{depth} messages wait in {queue!r} (runbook {runbook})",
    )


def _growth(
    ctx: CheckContext, params: CeleryQueuesParams, queue: str, depth: int
) -> Finding | None:
    if ctx.store is None:
        return None
    metric = f"depth:{queue}"
    previous = ctx.store.last_observation("celery_queues", params.target, metric)
    ctx.store.record_observation("celery_queues", params.target, metric, depth)
    if previous is None:
        return None
    before, at = previous
    seconds = (datetime.now(UTC) - at).total_seconds()
    if seconds < MIN_GROWTH_SECONDS:
        return None
    rate = (depth - before) * 60 / seconds
    limit = ctx.settings.workers.growth_warning_per_minute
    if rate <= limit:
        return None
    return _finding(
        "celery_queues",
        "celery_queue_growing",
        Severity.WARNING,
        subject=queue,
        observed=round(rate, 2),
        threshold=limit,
        evidence={"before": int(before), "after": depth, "seconds": round(seconds, 1)},
        summary=f"{queue!r} grows by {rate:.1f} messages/min",
    )


def _oversized(ctx: CheckContext, target: ScaleTarget, depths: dict[str, int]) -> Finding | None:
    """A pool above its minimum whose queues are all at or below the warning band; or, when
    the queues are busy and the pool is already at its maximum, celery_pool_at_max."""
    if any(busy(ctx.settings, depths.get(q, 0)) for q in target.queues):
        state = ctx.state
        state.hset(scale_key(target.name), "last_busy", repr(time.time()))  # scale-down window
        return _at_max(ctx, target, depths)
    sizes = _target_sizes(ctx, target)
    above = {w: n for w, n in sizes.items() if n is not None and n > target.min}
    if not above:
        return None
    return _finding(
        "celery_queues",
        "celery_pool_oversized",
        Severity.INFO,
        subject=target.name,
        observed=max(above.values()),
        threshold=target.min,
        evidence={
            "pool": sizes,
            "min": target.min,
            "max": target.max,
            "queues": {q: depths.get(q, 0) for q in target.queues},
        },
        summary=f"{target.name}: pool above its minimum {target.min} while its queues are drained",
    )


def _at_max(ctx: CheckContext, target: ScaleTarget, depths: dict[str, int]) -> Finding | None:
    """Runbook 001 "System Overload": scale first; at the maximum, reduce load instead."""
    sizes = {w: n for w, n in _target_sizes(ctx, target).items() if n is not None}
    if not sizes or min(sizes.values()) < target.max:
        return None
    return _finding(
        "celery_queues",
        "celery_pool_at_max",
        Severity.HIGH,
        subject=target.name,
        observed=min(sizes.values()),
        threshold=target.max,
        evidence={
            "pool": sizes,
            "max": target.max,
            "queues": {q: depths.get(q, 0) for q in target.queues},
        },
        summary=f"{target.name}: backlog with the pool at its maximum {target.max}",
    )


def _target_sizes(ctx: CheckContext, target: ScaleTarget) -> dict[str, int | None]:
    if target.backend == "celery":
        app = monitor_app(ctx.settings)
        return pool_sizes(app, scale_workers_of(app, target))
    try:
        from remediation.compose import count_replicas
    except ImportError:
        ctx.log.warning("compose backend not available", scale_target=target.name)
        return {}
    project, service = target.project or "", target.service or ""  # required for compose
    return {f"{project}/{service}": int(count_replicas(ctx.settings, project, service))}


@check("celery_queues")
def celery_queues(ctx: CheckContext, params: CeleryQueuesParams) -> list[Finding]:
    """How many messages wait in each of REMEDIATION_WORKERS__QUEUES, and how fast that grows
    (runbook 004 "Worker Queue Backlog: pending jobs > 50", runbook 002 "queue depth > 1000").

    Depth is the queue's list plus its priority sub-queues on a Redis broker (messages
    reserved by workers, the unacked hash, are in the evidence), or the ready messages of a
    passive queue declare on RabbitMQ (a queue that does not exist is empty). Past
    BACKLOG_WARNING is celery_queue_backlog (warning), past BACKLOG_HIGH high. Depth is
    recorded each run;
    growth faster than GROWTH_WARNING_PER_MINUTE since the previous run is
    celery_queue_growing. A scale target whose queues are at or below BACKLOG_WARNING while
    its pool is above min is celery_pool_oversized (info); past it with the pool at max is
    celery_pool_at_max (high: runbook 001 "reduce load"). The first lets scale_workers shrink
    it SCALE_DOWN_STABILIZATION_SECONDS after the backlog was last seen (the time is kept
    in rem:scale:<name> on the state Redis: bookkeeping, nothing on the cluster changes).
    Redis and RabbitMQ brokers can be measured; others get celery_queue_depth_unsupported."""
    w = ctx.settings.workers
    queues = list(dict.fromkeys([*w.queues, *(q for t in w.scale_targets for q in t.queues)]))
    depths = queue_depths(ctx.settings, queues)
    if depths is None:
        scheme = broker_url(ctx.settings).split(":", 1)[0]
        return [
            _finding(
                "celery_queues",
                "celery_queue_depth_unsupported",
                Severity.INFO,
                observed=scheme,
                summary=(
                    "queue depth is read from Redis and"
                    f" RabbitMQ brokers; this broker is {scheme}://"
                ),
            )
        ]
    extra = {"reserved_all_queues": reserved(ctx.settings)}
    findings: list[Finding] = []
    for queue in w.queues:
        depth = sum(depths[queue].values())
        for found in (
            _depth_finding(ctx.settings, queue, depths[queue], extra),
            _growth(ctx, params, queue, depth),
        ):
            if found is not None:
                findings.append(found)
    totals = {q: sum(d.values()) for q, d in depths.items()}
    for target in w.scale_targets:
        oversized = _oversized(ctx, target, totals)
        if oversized is not None:
            findings.append(oversized)
    ctx.log.info("celery queue depths", depths=totals, **extra)
    return findings


@check("celery_stuck_tasks")
def celery_stuck_tasks(ctx: CheckContext, params: CeleryStuckTasksParams) -> list[Finding]:
    """Tasks running far longer than expected (runbook 002 "Stuck jobs").

    A task active longer than STUCK_FACTOR x its expected time (EXPECTED_SECONDS per task
    name, else DEFAULT_EXPECTED_SECONDS) is celery_task_stuck (high), with its id, name,
    worker and runtime; never its arguments. At most 20 per run, the longest first. The
    remediator's own tasks (remediation.check.*, remediation.act.*) are never reported."""
    _, stuck = stuck_tasks(monitor_app(ctx.settings), ctx.settings)
    if len(stuck) > MAX_STUCK_FINDINGS:
        ctx.log.warning("more stuck tasks than reported", stuck=len(stuck))
    return [
        _finding(
            "celery_stuck_tasks",
            "celery_task_stuck",
            Severity.HIGH,
            subject=t["id"],
            observed=t["runtime_seconds"],
            threshold=t["limit_seconds"],
            evidence=t,
            summary=(
                f"{t['name']} [{t['id']}] has run {t['runtime_seconds']:.0f} s on"
                f" {t['worker']} (limit {t['limit_seconds']:.0f} s)"
            ),
        )
        for t in stuck[:MAX_STUCK_FINDINGS]
    ]


class PausedQueuesParams(CheckParams):
    """target: always "self", the Celery cluster this worker belongs to."""

    @field_validator("target")
    @classmethod
    def _own_cluster(cls, value: str) -> str:
        if value != "self":
            raise ValueError("paused queues belong to this worker's own Celery cluster: use 'self'")
        return value


@check("celery_paused_queues")
def celery_paused_queues(ctx: CheckContext, params: PausedQueuesParams) -> list[Finding]:
    """Celery queues pause_low_priority paused (runbook 001 "System Overload").

    Pause time up -> celery_queue_pause_expired (info; resume_low_priority). Still paused
    but a worker consumes the queue again (one started since) ->
    celery_queue_pause_incomplete (warning; pause_low_priority pauses it too). Asks the
    workers (remote control) only while a pause is in force."""
    state = ctx.state
    now, findings = time.time(), []
    for queue, rec in records(state, PAUSED_INDEX, paused_key):
        base = {"check": "celery_paused_queues", "target": params.target, "subject": queue}
        evidence = {
            "workers": json.loads(rec.get("workers", "[]")),
            "expires_at": rec.get("expires_at"),
            "by": rec.get("by"),
        }
        if due(rec, now):
            findings.append(
                Finding(
                    **base,
                    kind="celery_queue_pause_expired",
                    severity=Severity.INFO,
                    evidence=evidence,
                    summary=f"pause of {queue!r} is due to end",
                )
            )
            continue
        leaking = consumers(own_app(ctx.settings), [queue], timeout=PAUSE_CONTROL_TIMEOUT)
        if leaking:
            findings.append(
                Finding(
                    **base,
                    kind="celery_queue_pause_incomplete",
                    severity=Severity.WARNING,
                    observed=len(leaking),
                    threshold=0,
                    evidence={**evidence, "consuming": leaking},
                    summary=f"{queue!r} is paused but {len(leaking)} worker(s) consume it",
                )
            )
    return findings
