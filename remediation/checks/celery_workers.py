"""The monitored Celery cluster: are workers answering, how deep are the queues, is a task
stuck, is a pool bigger than its backlog needs (runbooks 002 "Celery Worker Issues", 004
"Worker Queue Backlog", 001 "System Overload: scale resources").

The cluster is the one on REMEDIATION_WORKERS__BROKER_URL, or this worker's own broker
when that is unset. Remote control (ping, inspect) goes through a small Celery app bound
to that broker, built once per process; queue depth is read from the broker: LLEN on Redis,
a passive queue declare on RabbitMQ.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import AfterValidator, Field

from remediation.clients import redis as redis_clients
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import ACTION_PREFIX, CHECK_PREFIX, check
from remediation.settings import ScaleTarget, Settings

CLUSTER = "celery"
"""The only target name of these checks: the cluster is configured by REMEDIATION_WORKERS__*."""
CONTROL_TIMEOUT = 1.5
"""Seconds to wait for workers' replies to ping and inspect."""
PRIORITY_STEPS = (3, 6, 9)
"""kombu's Redis priority sub-queues: <queue>\\x06\\x16<step>; step 0 is the queue itself."""
PRIORITY_SEP = "\x06\x16"
UNACKED = "unacked"
"""Hash of messages reserved by workers and not yet acknowledged (kombu Redis transport)."""
MIN_GROWTH_SECONDS = 1.0
"""Runs closer together than this do not compute a growth rate (division by almost zero)."""
MAX_STUCK_FINDINGS = 20
"""Stuck tasks reported per run (the longest-running first)."""
OWN_TASKS = (CHECK_PREFIX, ACTION_PREFIX)
"""Name prefixes of the remediator's own tasks: never reported stuck, never revoked (a
long backup or VACUUM is the remediator at work, and revoking it would leave its guards
held and its audit row unwritten)."""

_APPS: dict[tuple[int, str], Any] = {}


def scale_key(name: str) -> str:
    """Hash on the state Redis: last_busy, last_up, last_down (epoch seconds), by."""
    return f"rem:scale:{name}"


def broker_url(settings: Settings) -> str:
    """The monitored cluster's broker: REMEDIATION_WORKERS__BROKER_URL, else our own."""
    return (settings.workers.broker_url or settings.broker_url).get_secret_value()


def monitor_app(settings: Settings) -> Any:
    """A Celery app for remote control of the monitored cluster, one per broker per process.

    The remediation app itself when the cluster is our own; otherwise a bare app with no
    tasks, which only publishes control messages and reads replies."""
    url = broker_url(settings)
    if url == settings.broker_url.get_secret_value():
        from remediation.celery_app import get_app  # the Celery app imports every check

        return get_app()
    key = (os.getpid(), url)
    if key not in _APPS:
        app = Celery("remediation-monitor", broker=url, set_as_current=False)
        app.conf.update(
            accept_content=["json"],
            task_serializer="json",
            broker_connection_retry_on_startup=False,
            broker_connection_timeout=3,
            broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 3},
        )
        _APPS[key] = app
    return _APPS[key]


def reset() -> None:
    """Forget the control apps (between tests)."""
    _APPS.clear()


def _the_cluster(value: str) -> str:
    if value != CLUSTER:
        raise ValueError(
            "the monitored Celery cluster is configured by REMEDIATION_WORKERS__BROKER_URL;"
            f" its target name is {CLUSTER!r}"
        )
    return value


ClusterName = Annotated[str, Field(max_length=64), AfterValidator(_the_cluster)]
"""The target of every Celery check and of revoke_stuck_tasks: always 'celery'."""


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


# --- reading the cluster -----------------------------------------------------------------


def answering(app: Any, destination: list[str] | None = None) -> list[str]:
    """Workers that answered a ping within CONTROL_TIMEOUT."""
    replies = app.control.ping(timeout=CONTROL_TIMEOUT, destination=destination) or []
    return sorted(w for reply in replies for w in reply)


def consumers(app: Any, queues: list[str]) -> list[str]:
    """Workers (that answered) consuming at least one of queues."""
    replies = app.control.inspect(timeout=CONTROL_TIMEOUT).active_queues() or {}
    wanted = set(queues)
    return sorted(w for w, qs in replies.items() if any(q.get("name") in wanted for q in qs or ()))


def pool_sizes(app: Any, workers: list[str]) -> dict[str, int | None]:
    """Pool processes per worker (None: no answer, or a pool that cannot be resized)."""
    stats = app.control.inspect(timeout=CONTROL_TIMEOUT, destination=workers).stats() or {}
    sizes: dict[str, int | None] = {}
    for w in workers:
        processes = (stats.get(w) or {}).get("pool", {}).get("processes")
        sizes[w] = len(processes) if isinstance(processes, list) else None
    return sizes


def scale_workers_of(app: Any, target: ScaleTarget) -> list[str]:
    """The workers a celery scale target resizes: the named one, or every consumer of its queues."""
    return [target.worker] if target.worker else consumers(app, target.queues)


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def queue_depths(settings: Settings, queues: list[str]) -> dict[str, dict[str, int]] | None:
    """Pending messages per queue and per priority sub-queue (Redis) or in all ("all",
    RabbitMQ keeps priorities inside one queue); None on any other broker."""
    url = broker_url(settings)
    if is_amqp(url):
        return {q: {"all": n} for q, n in amqp_depths(monitor_app(settings), queues).items()}
    if not is_redis(url):
        return None
    client = redis_clients.client(url)
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.llen(q)
        for step in PRIORITY_STEPS:
            pipe.llen(f"{q}{PRIORITY_SEP}{step}")
    lengths = iter(pipe.execute())
    steps = (0, *PRIORITY_STEPS)
    return {q: {str(step): int(next(lengths)) for step in steps} for q in queues}


def amqp_depths(app: Any, queues: list[str]) -> dict[str, int]:
    """Ready messages per queue by a passive queue_declare (creates nothing); a queue that
    does not exist holds 0. Reserved (unacknowledged) messages are not counted, as on Redis."""
    depths = {}
    with app.connection_for_read() as conn:
        for q in queues:
            channel = conn.channel()  # a 404 closes the channel it happened on: one per queue
            try:
                depths[q] = int(channel.queue_declare(queue=q, passive=True).message_count)
            except conn.channel_errors as exc:
                if getattr(exc, "code", None) != 404:
                    raise
                depths[q] = 0
            finally:
                if getattr(channel, "is_open", False):
                    channel.close()
    return depths


def reserved(settings: Settings) -> int | None:
    """Messages reserved by workers (the unacked hash); None on RabbitMQ, which does not tell."""
    if not is_redis(broker_url(settings)):
        return None
    return int(redis_clients.client(broker_url(settings)).hlen(UNACKED))


def busy(settings: Settings, depth: int) -> bool:
    """A backlog scaling responds to: past the warning band (runbook 004: > 50)."""
    return depth > settings.workers.backlog_warning


def stuck_tasks(
    app: Any, settings: Settings, timeout: float = CONTROL_TIMEOUT
) -> tuple[list[str], list[dict[str, Any]]]:
    """(workers that answered, their active tasks running longer than stuck_factor x
    expected, oldest first). The remediator's own tasks (OWN_TASKS) are left out. Only id,
    name, worker, pid and times: never args or kwargs (they can hold secrets)."""
    w = settings.workers
    active = app.control.inspect(timeout=timeout).active() or {}
    now = time.time()  # after the replies: a broadcast waits the whole timeout
    found = []
    for worker, tasks in active.items():
        for task in tasks or ():
            started = task.get("time_start")
            if not started:
                continue
            name = str(task.get("name") or task.get("type") or "?")
            if name.startswith(OWN_TASKS):
                continue
            limit = w.stuck_factor * w.expected_seconds.get(name, w.default_expected_seconds)
            runtime = now - float(started)
            if runtime > limit:
                found.append({"id": str(task.get("id")), "name": name, "worker": worker,
                              "pid": task.get("worker_pid"), "started_at": float(started),
                              "runtime_seconds": round(runtime, 1), "limit_seconds": limit})  # fmt: skip
    return sorted(active), sorted(found, key=lambda t: float(t["started_at"]))


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
        return [_finding("celery_workers", "celery_broker_unreachable", Severity.CRITICAL,
                         observed=type(exc).__name__,
                         summary=f"the monitored Celery broker is unreachable: {exc}")]  # fmt: skip
    ctx.log.info("celery workers answering", workers=workers)
    if workers:
        return []
    return [_finding("celery_workers", "celery_workers_down", Severity.CRITICAL, observed=0,
                     threshold=1, evidence={"queues": ctx.settings.workers.queues},
                     summary=f"no Celery worker answered a ping within {CONTROL_TIMEOUT} s")]  # fmt: skip


def _depth_finding(settings: Settings, queue: str, by_priority: dict[str, int],
                   extra: dict[str, Any]) -> Finding | None:  # fmt: skip
    w = settings.workers
    depth = sum(by_priority.values())
    if depth > w.backlog_high:
        severity, threshold, runbook = Severity.HIGH, w.backlog_high, "002: queue depth > 1000"
    elif depth > w.backlog_warning:
        severity, threshold, runbook = Severity.WARNING, w.backlog_warning, "004: pending > 50"
    else:
        return None
    targets = [t.name for t in w.scale_targets if queue in t.queues]
    return _finding("celery_queues", "celery_queue_backlog", severity, subject=queue,
                    observed=depth, threshold=threshold,
                    evidence={"by_priority": by_priority, "scale_targets": targets, **extra},
                    summary=f"{depth} messages wait in {queue!r} (runbook {runbook})")  # fmt: skip


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
    return _finding("celery_queues", "celery_queue_growing", Severity.WARNING, subject=queue,
                    observed=round(rate, 2), threshold=limit,
                    evidence={"before": int(before), "after": depth, "seconds": round(seconds, 1)},
                    summary=f"{queue!r} grows by {rate:.1f} messages/min")  # fmt: skip


def _oversized(ctx: CheckContext, target: ScaleTarget, depths: dict[str, int]) -> Finding | None:
    """A pool above its minimum whose queues are all at or below the warning band; or, when
    the queues are busy and the pool is already at its maximum, celery_pool_at_max."""
    if any(busy(ctx.settings, depths.get(q, 0)) for q in target.queues):
        state = redis_clients.client(ctx.settings.state_redis_url.get_secret_value())
        state.hset(scale_key(target.name), "last_busy", repr(time.time()))  # scale-down window
        return _at_max(ctx, target, depths)
    sizes = _target_sizes(ctx, target)
    above = {w: n for w, n in sizes.items() if n is not None and n > target.min}
    if not above:
        return None
    return _finding("celery_queues", "celery_pool_oversized", Severity.INFO, subject=target.name,
                    observed=max(above.values()), threshold=target.min,
                    evidence={"pool": sizes, "min": target.min, "max": target.max,
                              "queues": {q: depths.get(q, 0) for q in target.queues}},
                    summary=f"{target.name}: pool above its minimum {target.min} while its"
                            " queues are drained")  # fmt: skip


def _at_max(ctx: CheckContext, target: ScaleTarget, depths: dict[str, int]) -> Finding | None:
    """Runbook 001 "System Overload": scale first; at the maximum, reduce load instead."""
    sizes = {w: n for w, n in _target_sizes(ctx, target).items() if n is not None}
    if not sizes or min(sizes.values()) < target.max:
        return None
    return _finding("celery_queues", "celery_pool_at_max", Severity.HIGH, subject=target.name,
                    observed=min(sizes.values()), threshold=target.max,
                    evidence={"pool": sizes, "max": target.max,
                              "queues": {q: depths.get(q, 0) for q in target.queues}},
                    summary=f"{target.name}: backlog with the pool at its maximum {target.max}")  # fmt: skip


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
        return [_finding("celery_queues", "celery_queue_depth_unsupported", Severity.INFO,
                         observed=scheme, summary="queue depth is read from Redis and"
                         f" RabbitMQ brokers; this broker is {scheme}://")]  # fmt: skip
    extra = {"reserved_all_queues": reserved(ctx.settings)}
    findings: list[Finding] = []
    for queue in w.queues:
        depth = sum(depths[queue].values())
        for found in (_depth_finding(ctx.settings, queue, depths[queue], extra),
                      _growth(ctx, params, queue, depth)):  # fmt: skip
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
    return [_finding("celery_stuck_tasks", "celery_task_stuck", Severity.HIGH, subject=t["id"],
                     observed=t["runtime_seconds"], threshold=t["limit_seconds"], evidence=t,
                     summary=f"{t['name']} [{t['id']}] has run {t['runtime_seconds']:.0f} s on"
                             f" {t['worker']} (limit {t['limit_seconds']:.0f} s)")
            for t in stuck[:MAX_STUCK_FINDINGS]]  # fmt: skip
