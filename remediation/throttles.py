"""Temporary changes and their records: sync throttles (throttle_sync / restore_sync) and
paused Celery queues (pause_low_priority / resume_low_priority).

None waits in a long Celery countdown (a countdown past the visibility timeout runs more
than once): each change records an expiry in Redis, a check reports it once due
(api_rate_limits, celery_paused_queues), and the playbook runs the undo. The actions
write these records and the checks read them; both import them from here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from remediation.clients.redis import text
from remediation.context import ActionContext
from remediation.guards import keys as guard_keys

THROTTLE_INDEX = guard_keys.THROTTLE_INDEX
PAUSED_INDEX = guard_keys.PAUSED_QUEUE_INDEX
MAX_RECORDS = 1000
"""Throttle or pause records examined per run."""
CONTROL_TIMEOUT = 1.0
"""Seconds to wait for workers' replies about paused queues (Celery's default); a worker
missed is caught by celery_paused_queues as celery_queue_pause_incomplete and paused on the
next sweep."""
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
"""An integration or queue name a call may give."""


def throttle_key(integration: str) -> str:
    """Hash: original, original_absent, throttled, factor, throttled_at, expires_at, by."""
    return guard_keys.throttle(integration)


def paused_key(queue: str) -> str:
    """Hash: workers (JSON list), paused_at, expires_at, by."""
    return guard_keys.paused_queue(queue)


def due(record: dict[str, str], now: float) -> bool:
    """A record's expiry has passed; an unreadable expiry counts as passed, so a temporary
    change is never kept forever by a damaged record."""
    try:
        return now >= float(record.get("expires_at", "0"))
    except ValueError:
        return True


def records(client: redis.Redis, index: str, key: Any) -> list[tuple[str, dict[str, str]]]:
    """(name, record) of the first MAX_RECORDS members of index that still have a record."""
    out = []
    for i, member in enumerate(client.sscan_iter(index, count=100)):
        if i >= MAX_RECORDS:
            break
        name = text(member)
        raw = client.hgetall(key(name))
        if raw:
            out.append((name, {text(k): text(v) for k, v in raw.items()}))
    return out


def changed_by(ctx: ActionContext) -> str:
    """Who made a change, for its record: the incident, or "by hand"."""
    return f"incident {ctx.trigger.incident}" if ctx.trigger else "by hand"


def iso(epoch: str | float) -> str:
    """Epoch seconds as an ISO time (UTC); the input as it was when it is not a time."""
    try:
        return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return str(epoch)
