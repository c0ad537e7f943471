"""The Celery events source's bookkeeping, fed events in-process (no broker): what a hostile
event becomes, the bounds on workers and failures (tests/watch/ has the real workers)."""

from __future__ import annotations

import time
from collections.abc import Callable

import kombu
from celery import Celery

from remediation.settings import Settings
from remediation.watch.sources.celery import (
    MAX_WORKERS,
    WINDOW_SECONDS,
    CelerySource,
    _Receiver,
)


def source(unit_env: Callable[..., Settings], failures: int = 3) -> CelerySource:
    return CelerySource(
        unit_env(
            REMEDIATION_WATCH__HEARTBEAT_GAP_SECONDS="5",
            REMEDIATION_WATCH__TASK_FAILURES_PER_MINUTE=str(failures),
        )
    )


def pending(src: CelerySource) -> list[tuple[str, str, object]]:
    out = [(e.kind, e.check, e.detail.get("hostname")) for e in src._pending]
    src._pending.clear()
    return out


def test_hostile_events_are_ignored_or_cut_down(unit_env: Callable[..., Settings]) -> None:
    """Events that are not dicts or name no plausible hostname are ignored; a worker-offline
    with a forged time gets ours; a failure keeps its exception's type, never its text."""
    src = source(unit_env, failures=1)
    for bad in (None, [], "worker-offline", {"type": "worker-offline"}):
        src._on_event(bad)
    src._on_event({"type": "worker-offline", "hostname": "a b; rm -rf /"})
    src._on_event({"type": "worker-offline", "hostname": "x" * 300})
    assert pending(src) == []
    src._on_event({"type": "worker-offline", "hostname": "w1@h", "timestamp": 1.0})
    (offline,) = src._pending
    assert abs(offline.at - time.time()) < 60
    pending(src)
    secret = "ValueError('password=hunter2')"
    for _ in range(2):
        src._on_event({"type": "task-failed", "hostname": "w1@h", "exception": secret})
    events = list(src._pending)
    assert [(e.kind, e.check) for e in events] == [
        ("task_failures", "celery_stuck_tasks"),
        ("task_failures", "celery_queues"),
    ]
    assert events[0].detail["exception"] == "ValueError"
    assert "hunter2" not in str(events[0].detail)


def test_workers_remembered_are_bounded_and_the_longest_silent_goes_first(
    unit_env: Callable[..., Settings],
) -> None:
    """Past MAX_WORKERS the worker heard from longest ago is forgotten; a heartbeat moves a
    worker to the back; a silence is reported once, then the worker is forgotten."""
    src = source(unit_env)
    for i in range(MAX_WORKERS + 5):
        src._beat(f"w{i}@h", 100.0 + i)
    known = src.known_workers()
    assert len(known) == MAX_WORKERS and known[0] == "w5@h"
    src._beat("w5@h", 2000.0)
    assert src.known_workers()[-1] == "w5@h"
    src._check_gaps(2004.0)  # everyone but w5 is silent for longer than 5 s
    gaps = pending(src)
    assert len(gaps) == MAX_WORKERS - 1 and ("heartbeat_gap", "celery_workers", "w6@h") in gaps
    assert src.known_workers() == ["w5@h"]
    src._check_gaps(2004.5)
    assert pending(src) == []


def test_a_worker_that_beats_slowly_is_not_silent_between_its_beats(
    unit_env: Callable[..., Settings],
) -> None:
    """The gap is at least 1.5 heartbeat intervals of the worker (its freq): a gap of 5 s
    allows a worker beating every 10 s 15 s, one whose freq is nonsense the gap, and one
    never heard beating 3 s (the default 2 s interval) when the gap is shorter."""
    src = source(unit_env)
    src._on_event({"type": "worker-heartbeat", "hostname": "slow@h", "freq": 10.0})
    src._on_event({"type": "worker-heartbeat", "hostname": "odd@h", "freq": "10"})
    start = time.monotonic()
    src._check_gaps(start + 6)
    assert [h for _, _, h in pending(src)] == ["odd@h"]
    src._check_gaps(start + 16)
    assert [h for _, _, h in pending(src)] == ["slow@h"]
    short = CelerySource(unit_env(REMEDIATION_WATCH__HEARTBEAT_GAP_SECONDS="1"))
    short._beat("w@h", 100.0)
    short._check_gaps(102.5)
    assert pending(short) == []
    short._check_gaps(103.5)
    assert [h for _, _, h in pending(short)] == ["w@h"]


def test_task_failures_count_within_a_sliding_minute_and_fire_once_a_minute(
    unit_env: Callable[..., Settings],
) -> None:
    """Three failures a minute are allowed: the fourth within 60 s fires; more in that minute
    do not; failures spread wider than a minute never fire; at most 60 counters are kept."""
    src = source(unit_env, failures=3)
    event = {"type": "task-failed", "hostname": "w@h"}
    for t in (0.0, 30.0, 61.0, 95.0, 130.0):  # never four within a minute
        src._failed(event, "w@h", 1000.0 + t)
    assert pending(src) == []
    for t in (131.0, 132.0):
        src._failed(event, "w@h", 1000.0 + t)
    assert [k for k, _, _ in pending(src)] == ["task_failures", "task_failures"]
    for t in range(133, 190):
        src._failed(event, "w@h", 1000.0 + t)
    assert pending(src) == [] and len(src._failures) <= WINDOW_SECONDS
    src._failed(event, "w@h", 1000.0 + 192)
    assert len(pending(src)) == 2  # still above the rate a minute later: again


def test_a_message_the_receiver_cannot_read_is_counted_not_raised() -> None:
    """A message body that is no Celery event (forged on the broker) is skipped."""
    app = Celery("unit", broker="memory://", set_as_current=False)
    with kombu.Connection("memory://") as conn:
        receiver = _Receiver(conn, handlers={"*": lambda e: None}, app=app)
        receiver._receive({"no": "type"}, None)
        receiver._receive([{"type": "worker-heartbeat", "clock": "not a number"}], None)
    assert receiver.malformed == 2
