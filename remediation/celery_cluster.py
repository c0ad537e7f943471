"""A Celery cluster seen from outside: who answers, what each worker consumes, how big its
pool is, how deep its queues are, which tasks run too long.

Shared by the Celery checks (checks/celery_workers.py) and the actions that change the
cluster (actions/celery_workers.py, actions/pauses.py), and by `remediation status`. It
never imports the remediator's own Celery app: remote control goes through a small app
bound to the broker's URL, built once per process and broker, which only publishes
control messages and reads replies. The watched cluster is the one on
REMEDIATION_WORKERS__BROKER_URL, or this worker's own broker when that is unset; queue
pauses act on this worker's own cluster (REMEDIATION_BROKER_URL).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Annotated, Any

from celery import Celery
from pydantic import AfterValidator, Field

from remediation.clients import redis as redis_clients
from remediation.guards import keys as guard_keys
from remediation.registry import ACTION_PREFIX, CHECK_PREFIX
from remediation.settings import ScaleTarget, Settings

CLUSTER = "celery"
"""The only target name of the watched cluster's checks: it is configured by REMEDIATION_WORKERS__*."""
OWN_QUEUE = "celery"
"""The remediation worker's own queue (Celery's default queue; celery_config keeps it)."""
CONTROL_TIMEOUT = 1.5
"""Seconds to wait for workers' replies to ping and inspect."""
PRIORITY_STEPS = (3, 6, 9)
"""kombu's Redis priority sub-queues: <queue>\\x06\\x16<step>; step 0 is the queue itself."""
PRIORITY_SEP = "\x06\x16"
UNACKED = "unacked"
"""Hash of messages reserved by workers and not yet acknowledged (kombu Redis transport)."""
OWN_TASKS = (CHECK_PREFIX, ACTION_PREFIX)
"""Name prefixes of the remediator's own tasks: never reported stuck, never revoked (a
long backup or VACUUM is the remediator at work, and revoking it would leave its guards
held and its audit row unwritten)."""

_APPS: dict[tuple[int, str], Any] = {}


def scale_key(name: str) -> str:
    """Hash on the state Redis: last_busy, last_up, last_down (epoch seconds), by."""
    return guard_keys.scale(name)


def broker_url(settings: Settings) -> str:
    """The watched cluster's broker: REMEDIATION_WORKERS__BROKER_URL, else our own."""
    return (settings.workers.broker_url or settings.broker_url).get_secret_value()


def control_app(url: str) -> Any:
    """A Celery app with no tasks for remote control of the cluster on the broker at url,
    one per broker per process."""
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


def monitor_app(settings: Settings) -> Any:
    """The control app of the watched cluster (REMEDIATION_WORKERS__BROKER_URL)."""
    return control_app(broker_url(settings))


def own_app(settings: Settings) -> Any:
    """The control app of this worker's own cluster (REMEDIATION_BROKER_URL)."""
    return control_app(settings.broker_url.get_secret_value())


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


def answering(app: Any, destination: list[str] | None = None) -> list[str]:
    """Workers that answered a ping within CONTROL_TIMEOUT."""
    replies = app.control.ping(timeout=CONTROL_TIMEOUT, destination=destination) or []
    return sorted(w for reply in replies for w in reply)


def consumers(
    app: Any,
    queues: Iterable[str],
    destination: list[str] | None = None,
    timeout: float = CONTROL_TIMEOUT,
) -> list[str]:
    """Workers (that answered within timeout) consuming at least one of queues."""
    replies = app.control.inspect(timeout=timeout, destination=destination).active_queues() or {}
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
    return redis_depths(redis_clients.client(url), queues)


def redis_depths(client: Any, queues: Iterable[str]) -> dict[str, dict[str, int]]:
    """Messages per queue on a Redis broker, by priority step ("0" is the queue itself)."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for q in names:
        pipe.llen(q)
        for step in PRIORITY_STEPS:
            pipe.llen(f"{q}{PRIORITY_SEP}{step}")
    lengths = iter(pipe.execute())
    steps = (0, *PRIORITY_STEPS)
    return {q: {str(step): int(next(lengths)) for step in steps} for q in names}


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
                found.append(
                    {
                        "id": str(task.get("id")),
                        "name": name,
                        "worker": worker,
                        "pid": task.get("worker_pid"),
                        "started_at": float(started),
                        "runtime_seconds": round(runtime, 1),
                        "limit_seconds": limit,
                    }
                )
    return sorted(active), sorted(found, key=lambda t: float(t["started_at"]))
