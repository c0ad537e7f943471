"""Schedule slots: which firing of which beat entry a message is, and running each once.

Beat (remediation.beat.SlotScheduler) puts a header on every message it sends:
``remediation_slot: {"entry": name, "slot": epoch seconds, "every": seconds or 0, "sig": hmac}``
where ``slot`` is the due time the schedule computed (not the send time), so two beats that
both fire the same slot name the same slot. The check task claims ``(entry, slot)`` in the
state Redis with SET NX before anything runs; the second claim runs nothing and is audited
(check_runs status 'duplicate', README "Exactly-once schedule slots").

The header is hostile input: its shape and bounds are checked and it is signed with
REMEDIATION_SIGNING_KEY (domain "slot"), so a forged or damaged header is ignored (the call
runs as a call by hand would) and can never make a slot be skipped.

Interval entries are spread: each runs on a grid ``offset + k * every`` (epoch seconds), the
offsets of the unpinned entries with the same interval spaced evenly over it in name order;
an entry with ``"pin": True`` keeps offset 0 (it fires on the interval's boundary). Crontab
entries are never moved.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from celery.schedules import crontab, schedule

from remediation import signing

SLOT_HEADER = "remediation_slot"
_ENTRY_NAME = re.compile(r"^[\w.:@/+-]{1,200}$")
MAX_EVERY = 366 * 86400
SLOT_PAST = 366 * 86400
"""A slot older than this (a message that waited a year in the broker) is not a slot."""
SLOT_FUTURE = 3600
"""Nor one more than this ahead of the worker's clock (clock skew between hosts allowed)."""
DUPLICATE_ERROR = "slot already run"


def is_interval(sched: Any) -> bool:
    """A plain Celery interval (crontab and solar schedules are not spread)."""
    return type(sched) is schedule


def spread_offsets(entries: dict[str, dict[str, Any]], pinned: set[str]) -> dict[str, int]:
    """Offset (whole seconds) of each interval entry in its interval: the unpinned entries
    with the same interval evenly spaced over it in name order, pinned ones at 0."""
    by_every: dict[int, list[str]] = {}
    offsets: dict[str, int] = {}
    for name, entry in entries.items():
        sched = entry["schedule"]
        if not is_interval(sched):
            continue
        every = max(1, round(sched.run_every.total_seconds()))
        if name in pinned:
            offsets[name] = 0
        else:
            by_every.setdefault(every, []).append(name)
    for every, names in by_every.items():
        for i, name in enumerate(sorted(names)):
            offsets[name] = (i * every) // len(names)
    return offsets


def grid_slot(now: float, every: float, offset: float) -> float:
    """The latest grid point ``offset + k * every`` at or before now."""
    return offset + math.floor((now - offset) / every) * every


def payload(entry: str, slot: int, every: int) -> dict[str, Any]:
    return {"entry": entry, "slot": slot, "every": every}


def header(key: bytes, entry: str, slot: float, every: float) -> dict[str, Any]:
    """The signed slot header for one firing (slot rounded to the second)."""
    body = payload(entry, round(slot), round(every))
    return {**body, "sig": signing.sign(key, "slot", body)}


def parse(key: bytes, raw: Any, now: float | None = None) -> tuple[str, int, int] | None:
    """(entry, slot, every) from a header, or None when it is absent, malformed, out of
    bounds or not signed with our key: such a call runs as a call by hand."""
    if not isinstance(raw, dict) or set(raw) != {"entry", "slot", "every", "sig"}:
        return None
    entry, slot, every = raw["entry"], raw["slot"], raw["every"]
    if not isinstance(entry, str) or not _ENTRY_NAME.match(entry):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (slot, every)):
        return None
    now = time.time() if now is None else now
    if not (now - SLOT_PAST <= slot <= now + SLOT_FUTURE) or not (0 <= every <= MAX_EVERY):
        return None
    if not signing.valid(key, "slot", payload(entry, slot, every), raw["sig"]):
        return None
    return entry, slot, every


def claim_ttl(every: int, lock_timeout: int) -> int:
    """How long a claimed slot is remembered: three intervals, and at least twice the beat
    lock's timeout (the longest a cut-off beat may go on believing it holds the lock)."""
    return max(3 * every, 2 * lock_timeout, 60)


def describe(entry: str, slot: int) -> str:
    return f"{DUPLICATE_ERROR}: {entry} @ {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(slot))}"


def crontab_slot(sched: crontab, last_run_at: Any) -> float:
    """The crontab occurrence a due entry fires for: the first one after its last run."""
    last, delta, _ = sched.remaining_delta(last_run_at)
    due = last + delta
    return float(due.timestamp())


def missed(previous: float | None, slot: float, every: float) -> int:
    """Interval slots between the entry's previous run and this one that never ran (a beat
    outage): 0 when they are one interval apart, or unknown (no previous run, a crontab)."""
    if previous is None or every <= 0 or slot <= previous:
        return 0
    return max(0, round((slot - previous) / every) - 1)


LAST_TTL = 35 * 86400
"""How long the last slot of an entry is remembered: a gap longer than this is not counted."""
