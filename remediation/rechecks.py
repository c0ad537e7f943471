"""A deferred fix is looked at again when its wait ends, not at the next sweep.

An action deferred with a time (restart_container inside its back-off, a blast-radius window
that is full) leaves its incident open. Before event sources, the next beat sweep found the
condition again and asked once more, up to a sweep interval after the wait. Now the worker
sends the originating check (the trigger's check and params) to run at the deferral's time,
once per (check, params, second) across every worker (SET NX in the state Redis), within
MAX_AHEAD_SECONDS (a longer wait is left to the sweep: a Celery countdown is held by a
worker, and one past the broker's visibility timeout runs twice). The recheck carries an
event header (source "worker", kind "deferred"), so its check run says why it ran.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from remediation import causes
from remediation.context import Trigger
from remediation.guards import keys
from remediation.registry import CHECK_PREFIX

MAX_AHEAD_SECONDS = 600
MIN_AHEAD_SECONDS = 0.05
SOURCE, KIND = "worker", "deferred"

Send = Callable[[str, dict[str, Any], dict[str, Any], float], None]
"""send(check task name, kwargs, headers, countdown seconds)."""


def claim_key(check: str, params: dict[str, Any], at: float) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return keys.recheck(check, digest, int(at))


def schedule(
    state: Any,
    key: bytes,
    send: Send,
    trigger: Trigger,
    action: str,
    resource: str,
    retry_at: float,
    now: float | None = None,
) -> bool:
    """Send the trigger's check to run at retry_at, unless another worker already did or it
    is too far ahead. Raises what Redis or the broker raise (the caller logs it)."""
    now = time.time() if now is None else now
    ahead = max(retry_at - now, MIN_AHEAD_SECONDS)
    if ahead > MAX_AHEAD_SECONDS:
        return False
    claim = claim_key(trigger.check, trigger.check_params, retry_at)
    if not state.set(claim, "1", nx=True, ex=int(ahead) + 60):
        return False
    payload = causes.event_payload(
        source=SOURCE,
        kind=KIND,
        resource=f"{action}/{resource}"[:200],
        at=now,
        sent=now,
        events=1,
        watcher=causes.origin(),
        detail={"retry_at": round(retry_at, 3), "incident": trigger.incident[:64]},
    )
    headers = {causes.EVENT_HEADER: causes.event_header(key, payload)}
    send(CHECK_PREFIX + trigger.check, dict(trigger.check_params), headers, ahead)
    return True
