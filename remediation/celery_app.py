"""The Celery app: configuration from Settings, signal handlers, no task bodies."""

from __future__ import annotations

import functools
import os
from typing import Any

import structlog
from celery import Celery, signals
from celery.utils.saferepr import saferepr

from remediation import metrics, signing
from remediation.clients import redis as redis_clients
from remediation.guards import keys as guard_keys
from remediation.logging import configure_logging
from remediation.redact import redact
from remediation.settings import Settings, get_settings

RETRY_DELAY_SECONDS = 5  # before a task whose worker died runs again


def celery_config(s: Settings) -> dict[str, Any]:
    """Safe defaults (ENGINEERING.md): late ack, bounded retry on a lost worker, prefetch 1."""
    c = s.celery
    return {
        "broker_url": s.broker_url.get_secret_value(),
        "result_backend": s.result_backend.get_secret_value(),
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,  # requeue forever on a poison task: no
        "task_retry_on_worker_lost": True,  # bounded by max_retries below
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": c.soft_time_limit,
        "task_time_limit": c.time_limit,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "result_expires": c.result_expires,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "worker_send_task_events": True,
        # A worker cut off from RabbitMQ reconnects while the broker still holds its old
        # connection (until that one's heartbeat times out) and with it the worker's
        # remote-control queue: exclusive (Celery's default), redeclaring it fails with
        # RESOURCE_LOCKED and the worker exits ("Unrecoverable error"). Not exclusive, it
        # is still removed once unused (control_queue_expires).
        "control_queue_exclusive": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_concurrency": c.concurrency,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_scheduler": "remediation.beat:SlotScheduler",  # redbeat + slots (README)
        "redbeat_redis_url": s.state_redis_url.get_secret_value(),
        "redbeat_key_prefix": guard_keys.REDBEAT,
        "redbeat_redis_options": {"socket_timeout": 10, "socket_connect_timeout": 5},
        "redbeat_lock_timeout": c.redbeat_lock_timeout,
        "beat_max_loop_interval": c.beat_max_loop_interval,
        # A reserved message comes back after this: longer than any task may run, or a
        # long action (a backup) would be delivered again while it still runs.
        "broker_transport_options": {"visibility_timeout": visibility_timeout(s)},
    }


def visibility_timeout(s: Settings) -> int:
    from remediation import registry

    registry.load_all()
    longest = max(
        [s.celery.time_limit]
        + [int(a.timeout.total_seconds()) + 60 for a in registry.ACTIONS.values() if a.timeout]
    )
    return max(3600, longest + 600)


def beat_schedule(
    module: str, prune: bool = False
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """The validated schedule with the internal entries (the approvals' expiry; the daily
    audit prune when ``prune``), and each interval entry's offset on its grid (same-interval
    entries spread over it, pinned ones at 0: remediation.beat)."""
    from remediation.schedule import load_schedule_and_pins, parse_schedule
    from remediation.slots import spread_offsets
    from remediation.tasks import EXPIRE_EVERY_SECONDS, EXPIRE_TASK, PRUNE_EVERY_SECONDS, PRUNE_TASK

    entries, pinned = load_schedule_and_pins(module)
    # not an operator's entry: approvals must expire (= denied, audited) whatever they edit
    entries[EXPIRE_TASK] = {"task": EXPIRE_TASK, "schedule": parse_schedule(EXPIRE_EVERY_SECONDS)}
    if prune:  # the audit does not grow forever (issue 15)
        entries[PRUNE_TASK] = {"task": PRUNE_TASK, "schedule": parse_schedule(PRUNE_EVERY_SECONDS)}
    return entries, spread_offsets(entries, pinned)


@functools.cache
def get_app() -> Celery:
    """Build the app once: settings validated, tasks registered, schedule validated."""
    from remediation.tasks import register_tasks

    settings = get_settings()
    signing.key_of(settings)  # workers sign and verify trigger headers: no key, no start
    configure_logging(settings.log_level, settings.log_format)
    app = Celery("remediation")
    app.conf.update(celery_config(settings))
    # A task whose worker died is retried (same id) after default_retry_delay, at most
    # max_retries times; Celery has no setting for the delay, only this task attribute.
    app.conf.task_annotations = {
        "*": {
            "max_retries": settings.celery.max_retries_on_worker_lost,
            "default_retry_delay": RETRY_DELAY_SECONDS,
        }
    }
    register_tasks(app)
    app.conf.beat_schedule, app.conf.remediation_slot_offsets = beat_schedule(
        settings.schedule_module, prune=settings.retention.enabled
    )
    return app


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    s = get_settings()
    configure_logging(s.log_level, s.log_format)


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """Prefork children must not share the parent's sockets."""
    from remediation.audit.store import close_pools

    redis_clients.reset()
    close_pools()
    metrics.child_started()


@signals.worker_init.connect
def _prepare_metrics(**_: Any) -> None:
    """Multiprocess metrics must be set up in the main process before the pool forks."""
    metrics.prepare_worker(get_settings())


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    metrics.start_server(get_settings())


@signals.worker_ready.connect
def _doctor_at_start(**_: Any) -> None:
    """The doctor's checks, in a thread: logged, stored for `remediation status`, never
    stopping the worker (REMEDIATION_DOCTOR__AT_START=false: not run)."""
    from remediation.doctor import at_start

    at_start.start(get_settings())


@signals.worker_process_shutdown.connect
def _child_metrics_done(pid: int | None = None, **_: Any) -> None:
    metrics.child_exited(pid or os.getpid())


@signals.worker_shutdown.connect
def _stop_metrics(**_: Any) -> None:
    metrics.stop()


@signals.worker_init.connect
def _upgrade_audit_schema(**_: Any) -> None:
    """Create or upgrade the audit schema when a worker starts."""
    from remediation.audit.store import AuditStore

    applied = AuditStore(get_settings().audit_dsn.get_secret_value()).upgrade()
    if applied:
        structlog.get_logger("remediation").info("audit schema upgraded", versions=applied)


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


@signals.before_task_publish.connect
def _redact_reprs(headers: dict[str, Any] | None = None, body: Any = None, **_: Any) -> None:
    """Celery shows argsrepr/kwargsrepr in logs, events and Flower: mask secrets there."""
    if not isinstance(headers, dict) or "kwargsrepr" not in headers:
        return
    args, kwargs = (
        (body[0], body[1]) if isinstance(body, tuple | list) and len(body) >= 2 else ((), {})
    )
    headers["argsrepr"] = saferepr(redact(list(args)), 1024)
    headers["kwargsrepr"] = saferepr(redact(dict(kwargs)), 1024)
