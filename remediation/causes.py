"""Why a check ran: the event that caused it (a signed header from `remediation watch`), a
beat slot, or a call (by hand, a verification, the CLI). Recorded with the check run in the
audit (check_runs.cause) and counted (remediation_check_causes_total).

The event header crosses the broker, so it is signed (domain "event") and bounded like the
slot header: one that is malformed, too big, out of time or not signed is ignored and the
check runs as a call.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from typing import Any

from remediation import signing

EVENT_HEADER = "remediation_event"
MAX_HEADER_BYTES = 4096
MAX_AGE_SECONDS = 86400
"""An event header older than this is no cause we believe (a replayed message)."""
MAX_FUTURE_SECONDS = 300
_WORD = re.compile(r"^[A-Za-z0-9_.:,\- /*@]{1,200}$")
_FIELDS = {"source", "kind", "resource", "at", "sent", "events", "watcher", "detail"}


def event_payload(
    *,
    source: str,
    kind: str,
    resource: str,
    at: float,
    sent: float,
    events: int,
    watcher: str,
    detail: dict[str, Any],
) -> dict[str, Any]:
    return {
        "source": source,
        "kind": kind,
        "resource": resource,
        "at": round(at, 6),
        "sent": round(sent, 6),
        "events": events,
        "watcher": watcher,
        "detail": detail,
    }


def origin() -> str:
    """host:pid of this process, as the sender of an event (a watcher, a worker's recheck)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


def event_header(key: bytes, payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "sig": signing.sign(key, "event", payload)}


def parse_event(key: bytes, raw: Any, now: float | None = None) -> dict[str, Any] | None:
    """The event a header names ({"by": "event", ...}), or None when there is none we trust."""
    if not isinstance(raw, dict) or set(raw) != _FIELDS | {"sig"}:
        return None
    try:
        if len(json.dumps(raw)) > MAX_HEADER_BYTES:
            return None
    except (TypeError, ValueError):
        return None
    payload = {k: raw[k] for k in _FIELDS}
    words = (payload["source"], payload["kind"], payload["resource"], payload["watcher"])
    if not all(isinstance(w, str) and _WORD.match(w) for w in words):
        return None
    numbers = (payload["at"], payload["sent"])
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        return None
    if not isinstance(payload["events"], int) or not 1 <= payload["events"] <= 10**9:
        return None
    if not isinstance(payload["detail"], dict):
        return None
    now = time.time() if now is None else now
    if not now - MAX_AGE_SECONDS <= payload["sent"] <= now + MAX_FUTURE_SECONDS:
        return None
    if not signing.valid(key, "event", payload, raw["sig"]):
        return None
    return {"by": "event", **payload}


def beat(entry: str, slot: int) -> dict[str, Any]:
    return {"by": "beat", "entry": entry, "slot": slot}


def by(cause: dict[str, Any] | None) -> str:
    """The metric label: event, beat or call."""
    return str(cause["by"]) if cause else "call"
