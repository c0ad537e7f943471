"""Schedule slots without servers: spread offsets, the slot header's validation, pin."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from celery.schedules import crontab, schedule

from remediation import slots
from remediation.errors import ScheduleError
from remediation.schedule import load_schedule_and_pins, validate_entry

KEY = b"k" * 32
NOW = 1_800_000_000.0


def every(seconds: int) -> dict[str, Any]:
    return {"schedule": schedule(seconds)}


def test_shipped_schedule_offsets_are_stable_and_distinct() -> None:
    """The shipped schedule's same-interval entries get distinct offsets, the same each load."""
    entries, pinned = load_schedule_and_pins("beat_schedule")
    first = slots.spread_offsets(entries, pinned)
    again = slots.spread_offsets(*load_schedule_and_pins("beat_schedule"))
    assert first == again
    for seconds in {60, 300}:
        same = [
            n
            for n, e in entries.items()
            if slots.is_interval(e["schedule"])
            and e["schedule"].run_every.total_seconds() == seconds
        ]
        assert len(same) > 1
        offsets = [first[n] for n in same]
        assert len(set(offsets)) == len(offsets)
        assert all(0 <= o < seconds for o in offsets)
    assert not any(isinstance(entries[n]["schedule"], crontab) for n in first)


def test_offsets_spaced_evenly_pinned_at_zero_crontab_untouched() -> None:
    """Four 60 s entries sit 15 s apart; a pinned one at 0; a crontab entry gets no offset."""
    entries = {n: every(60) for n in "abcd"} | {"p": every(60), "z": {"schedule": crontab()}}
    offsets = slots.spread_offsets(entries, {"p"})
    assert "z" not in offsets and offsets["p"] == 0
    assert sorted(offsets[n] for n in "abcd") == [0, 15, 30, 45]


def test_grid_slot_is_the_latest_grid_point() -> None:
    """The slot is the latest offset + k * every at or before now."""
    assert slots.grid_slot(1000.0, 60, 15) == 975.0
    assert slots.grid_slot(975.0, 60, 15) == 975.0
    assert slots.grid_slot(974.9, 60, 15) == 915.0


def test_header_round_trip() -> None:
    """A header the beat signs parses back to its entry, slot (whole second) and interval."""
    raw = slots.header(KEY, "sweep-x", NOW - 0.4, 60)
    assert slots.parse(KEY, raw, NOW) == ("sweep-x", round(NOW - 0.4), 60)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: "not a dict",
        lambda h: {**h, "extra": 1},
        lambda h: {k: v for k, v in h.items() if k != "sig"},
        lambda h: {**h, "entry": "x" * 201},
        lambda h: {**h, "entry": "bad name\n"},
        lambda h: {**h, "entry": 7},
        lambda h: {**h, "slot": "1800000000"},
        lambda h: {**h, "slot": True},
        lambda h: {**h, "slot": 1.5},
        lambda h: {**h, "slot": int(NOW) - 400 * 86400},
        lambda h: {**h, "slot": int(NOW) + 2 * 3600},
        lambda h: {**h, "every": -1},
        lambda h: {**h, "every": 10**12},
        lambda h: {**h, "slot": int(NOW) - 60},  # signature no longer matches
        lambda h: {**h, "sig": "0" * 64},
        lambda h: {**h, "sig": "é"},
        lambda h: {**h, "sig": None},
    ],
)
def test_hostile_headers_are_ignored(mutate: Any) -> None:
    """A malformed, out-of-bounds, forged or unsigned header parses to None (run as by hand)."""
    assert slots.parse(KEY, mutate(slots.header(KEY, "sweep-x", NOW, 60)), NOW) is None


def test_header_signed_with_another_key_is_ignored() -> None:
    """A header signed with another key is not ours: ignored."""
    assert slots.parse(KEY, slots.header(b"other" * 8, "sweep-x", NOW, 60), NOW) is None


def test_claim_ttl_covers_intervals_and_lock() -> None:
    """A claim outlives three intervals and twice the beat lock's timeout."""
    assert slots.claim_ttl(60, 10) == 180
    assert slots.claim_ttl(0, 1500) == 3000


def test_crontab_slot_is_the_occurrence_after_the_last_run() -> None:
    """A daily 06:15 entry last run yesterday at 06:15:02 fires for today's 06:15:00."""
    last = datetime(2026, 11, 27, 6, 15, 2, tzinfo=UTC)
    slot = slots.crontab_slot(crontab(minute="15", hour="6"), last)
    assert slot == datetime(2026, 11, 28, 6, 15, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("pin", "sched", "message"),
    [
        ("yes", 60, "'pin' must be True or False"),
        (True, "0 6 * * *", "interval schedules only"),
    ],
)
def test_pin_is_validated(pin: Any, sched: Any, message: str) -> None:
    """'pin' must be a bool and only on an interval entry."""
    entry = {"task": "remediation.check.redis_job_queue", "schedule": sched, "pin": pin}
    with pytest.raises(ScheduleError, match=message):
        validate_entry("e", {**entry, "kwargs": {"target": "self"}})


def test_pinned_entry_is_valid_and_not_passed_to_celery() -> None:
    """A pinned interval entry validates; 'pin' is not part of the Celery entry."""
    entry = {"task": "remediation.check.redis_job_queue", "schedule": 60, "pin": True}
    assert "pin" not in validate_entry("e", {**entry, "kwargs": {"target": "self"}})
