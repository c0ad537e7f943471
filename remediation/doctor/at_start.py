"""The worker runs the doctor once at start (REMEDIATION_DOCTOR__AT_START), in a daemon
thread: every row that is not ✓ is logged, the worker never stops over it, and the report
is kept in the state Redis (guards.keys.DOCTOR_LAST) for `remediation status`."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import redis
import structlog

from remediation.clients import redis as redis_clients
from remediation.doctor.runner import Report, run
from remediation.guards import keys
from remediation.redact import redact
from remediation.settings import Settings

log = structlog.get_logger("remediation.doctor")


def start(settings: Settings) -> threading.Thread | None:
    """Run the doctor in a daemon thread, unless switched off; the thread (for tests)."""
    if not settings.doctor.at_start:
        return None
    thread = threading.Thread(target=check, args=(settings,), daemon=True, name="doctor")
    thread.start()
    return thread


def check(settings: Settings) -> Report | None:
    """Run, log and store; any failure of the doctor itself is logged, never raised."""
    try:
        report = run(settings)
    except Exception as exc:  # the doctor must never take the worker down
        log.error("doctor failed", error=type(exc).__name__)
        return None
    for row in report.rows:
        if row.status != "ok":
            level = log.error if report.blocks(row) else log.warning
            level("doctor", **redact(row.as_dict()), blocking=report.blocks(row))
    counts = report.counts()
    log.info("doctor done", **counts)
    store(settings, report)
    return report


def store(settings: Settings, report: Report) -> None:
    """The report, with the host that ran it: the last worker to start overwrites it (a
    socket or folder may be fine on one host and not on another)."""
    data = {**report.as_dict(), "host": socket.gethostname()}
    try:
        redis_clients.state(settings).set(
            keys.DOCTOR_LAST, json.dumps(redact(data)), ex=keys.DOCTOR_LAST_TTL
        )
    except redis.RedisError as exc:
        log.warning("doctor report not stored", error=type(exc).__name__)


def last(r: Any) -> dict[str, Any] | None:
    """The stored report, or None (none yet, expired, or unreadable)."""
    raw = r.get(keys.DOCTOR_LAST)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
