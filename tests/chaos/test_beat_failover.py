"""Scheduler failover: two redbeat beats, the active one killed -9 mid-run, every schedule
slot counted from the audit trail: none fires twice, none is skipped.

Interval entries fire on a grid (remediation.slots: ``offset + k * INTERVAL``), so each
check run is attributed to the latest grid point at or before its start; two runs of one
entry on the same grid point are one slot fired twice. After a handover the overdue slot
fires at once and the next one on time, so two runs may be closer than an interval without
being the same slot."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
from celery.schedules import schedule

from remediation import slots
from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.chaos import scale
from tests.support.processes import REDBEAT_LOCK_KEY, BeatProcess, WorkerProcess
from tests.support.services import PersistentRedisServer

ENTRIES = scale(25, 30)
INTERVAL = 3  # seconds between two firings of one entry
KILLS = scale(1, 4)
STEADY = scale(5, 8)  # seconds of normal running before each kill and after the last
LOCK_TIMEOUT = 10  # REMEDIATION_CELERY__REDBEAT_LOCK_TIMEOUT's minimum
LOOP = 1  # REMEDIATION_CELERY__BEAT_MAX_LOOP_INTERVAL
HANDOVER_BOUND = LOCK_TIMEOUT + LOOP + 1  # the documented takeover time, with 1 s of slack
STEADY_GAP = INTERVAL + LOOP + 1  # the longest gap between two firings with no kill between
KEY = "chaos_slot_"


def offsets(entries: int) -> dict[str, int]:
    """The grid offset of each entry of schedule_module(entries)."""
    return slots.spread_offsets(
        {f"slot{i:02d}": {"schedule": schedule(INTERVAL)} for i in range(entries)}, set()
    )


OFFSETS = offsets(ENTRIES)


def slot_of(key: str, started: float) -> float:
    """The grid point a run of the entry probing ``key`` that started then belongs to."""
    return slots.grid_slot(started, INTERVAL, OFFSETS["slot" + key.removeprefix(KEY)])


def schedule_module(entries: int) -> str:
    return (
        "SCHEDULE = {\n"
        + "".join(
            f"    'slot{i:02d}': {{'task': 'remediation.check.redis_job_queue', "
            f"'schedule': {INTERVAL}, 'kwargs': {{'target': 'self', 'key': '{KEY}{i:02d}'}}}},\n"
            for i in range(entries)
        )
        + "}\n"
    )


@dataclass
class Kill:
    """One kill of the active beat and what followed."""

    at: float  # epoch seconds
    lock_taken_after: float = 0.0  # kill -> the new active beat logs "Acquired lock"
    first_firing_after: float = 0.0  # kill -> its first "Sending due task"


@dataclass
class Firings:
    """Firing times per schedule entry, read from the audit check_runs rows."""

    times: dict[str, list[float]] = field(default_factory=dict)
    task_ids: list[str] = field(default_factory=list)
    statuses: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, audit: Audit) -> Firings:
        rows = audit.rows(
            "SELECT params->>'key' AS key, task_id, status, extract(epoch FROM started_at) AS t"
            " FROM check_runs WHERE params->>'key' LIKE %s ORDER BY started_at",
            KEY + "%",
        )
        out = cls()
        for row in rows:
            out.times.setdefault(row["key"], []).append(float(row["t"]))
            out.task_ids.append(row["task_id"])
            out.statuses.add(row["status"])
        return out

    @property
    def total(self) -> int:
        return sum(len(t) for t in self.times.values())

    def gaps(self) -> list[tuple[str, float, float]]:
        """(entry, previous firing, next firing) for every pair of consecutive firings."""
        return [(k, a, b) for k, ts in self.times.items() for a, b in itertools.pairwise(ts)]


def log_events(beat: BeatProcess, text: str) -> list[float]:
    """Epoch times of the beat's JSON log lines whose event contains text."""
    return [at for _, at in beat.events(text)]


def the_active(beats: list[BeatProcess]) -> BeatProcess:
    active = [b for b in beats if b.active()]
    assert len(active) == 1, f"{len(active)} active beats: exactly one may hold the lock"
    return active[0]


def kill_active(
    beats: list[BeatProcess], start: Callable[[], BeatProcess], lock: redis.Redis
) -> Kill:
    """kill -9 the beat holding the lock, start a fresh standby, wait for the handover."""
    active = the_active(beats)
    assert lock.pttl(REDBEAT_LOCK_KEY) > 0, "the active beat holds no lock in Redis"
    kill = Kill(time.time())
    active.kill()
    beats.remove(active)
    beats.append(start())
    new = wait_for(
        lambda: next((b for b in beats if b.active()), None),
        HANDOVER_BOUND + 15,
        0.1,
        "a standby taking the lock",
    )
    sent = wait_for(lambda: log_events(new, "Sending due task"), 10, 0.1, "its first firing")
    kill.lock_taken_after = log_events(new, "Acquired lock")[0] - kill.at
    kill.first_firing_after = sent[0] - kill.at
    return kill


def test_active_beat_killed_no_slot_fired_twice_or_skipped(
    chaos_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[[dict[str, str]], BeatProcess],
    chaos_audit: Audit,
    state_redis: PersistentRedisServer,
    tmp_path: Path,
) -> None:
    """Kill -9 the active beat; the standby takes over within the lock timeout and every
    entry keeps firing once per interval: no slot twice, none skipped."""
    (tmp_path / "chaos_schedule.py").write_text(schedule_module(ENTRIES))
    env = {
        **chaos_env,
        "REMEDIATION_SCHEDULE_MODULE": "chaos_schedule",
        "PYTHONPATH": str(tmp_path),
        "REMEDIATION_CELERY__REDBEAT_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
        "REMEDIATION_CELERY__BEAT_MAX_LOOP_INTERVAL": str(LOOP),
    }
    start_worker(env, concurrency=4)
    lock = redis.Redis.from_url(state_redis.url(0))
    everyone: list[BeatProcess] = []

    def start() -> BeatProcess:
        everyone.append(start_beat(env))
        return everyone[-1]

    beats = [start()]
    wait_for(lambda: beats[0].active(), 60, 0.1, "the first beat taking the lock")
    beats.append(start())
    wait_for(lambda: len(Firings.read(chaos_audit).times) == ENTRIES, 30, 0.3, "every entry")
    kills = []
    for _ in range(KILLS):
        time.sleep(STEADY)
        kills.append(kill_active(beats, start, lock))
    time.sleep(STEADY)
    for beat in beats:
        beat.kill()
    ended = time.time()
    sent = sum(len(log_events(b, "Sending due task")) for b in everyone)
    wait_for(lambda: "running" not in Firings.read(chaos_audit).statuses, 30, 0.3, "checks done")
    lock.close()
    report(Firings.read(chaos_audit), kills, ended, sent)


def report(firings: Firings, kills: list[Kill], ended: float, sent: int) -> None:
    """The counts, printed (pytest -s shows them) and asserted."""
    doubles = [
        (k, slot)
        for k, ts in firings.times.items()
        for slot, n in Counter(slot_of(k, t) for t in ts).items()
        if n > 1
    ]
    skipped = [(k, round(b - a, 2)) for k, a, b in firings.gaps() if b - a > allowed(a, b, kills)]
    late = [k for k, ts in firings.times.items() if ts[-1] < ended - STEADY_GAP]
    print(
        f"\nbeat failover: {len(firings.times)} entries x every {INTERVAL}s, {firings.total} "
        f"slots fired ({sent} sent by the beats), {len(doubles)} fired twice, {len(skipped)} skipped, {len(kills)} kills;"
        f" lock taken after {[round(k.lock_taken_after, 1) for k in kills]} s, first firing "
        f"after {[round(k.first_firing_after, 1) for k in kills]} s"
    )
    assert len(firings.times) == ENTRIES
    assert firings.statuses == {"ok"}
    assert firings.total <= sent, "the worker ran more checks than the beats sent"
    assert len(set(firings.task_ids)) == len(firings.task_ids), "a task ran twice"
    assert doubles == [], f"slots fired twice: {doubles}"
    assert skipped == [], f"slots skipped: {skipped}"
    assert late == [], f"entries that stopped firing before the end: {late}"
    for kill in kills:
        assert kill.first_firing_after <= HANDOVER_BOUND, f"handover took {kill}"
    assert firings.total >= scale(80, 200)


def allowed(previous: float, following: float, kills: list[Kill]) -> float:
    """The longest acceptable gap: one interval, plus the handover for the gap across one.

    Firing times are when the worker started the check; one sent just before a kill may
    start just after it, so the gap across a handover is the one that contains the new
    active beat's first firing (half a second of worker latency allowed)."""
    if any(previous < k.at + k.first_firing_after <= following + 0.5 for k in kills):
        return INTERVAL + HANDOVER_BOUND
    return STEADY_GAP


SPLIT_ENTRIES = scale(10, 20)
SPLIT_RUN = scale(15, 45)  # seconds both beats fire
SPLIT_OFFSETS = offsets(SPLIT_ENTRIES)


def test_two_beats_both_firing_run_each_slot_once(
    chaos_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[[dict[str, str]], BeatProcess],
    chaos_audit: Audit,
    state_redis: PersistentRedisServer,
    tmp_path: Path,
) -> None:
    """Split brain: two real beats that both hold a lock and fire every slot (the second
    keeps its lock and schedule in another Redis database, as a beat left on a Redis that
    the others no longer use would). The workers run each (entry, slot) once: every slot
    both beats sent has one run 'ok' and one 'duplicate', counted from the audit."""
    (tmp_path / "chaos_schedule.py").write_text(schedule_module(SPLIT_ENTRIES))
    env = {
        **chaos_env,
        "REMEDIATION_SCHEDULE_MODULE": "chaos_schedule",
        "PYTHONPATH": str(tmp_path),
        "REMEDIATION_CELERY__BEAT_MAX_LOOP_INTERVAL": str(LOOP),
    }
    split = {**env, "REMEDIATION_STATE_REDIS_URL": state_redis.url(3)}  # its own lock
    start_worker(env, concurrency=4)
    beats = [start_beat(env), start_beat(split)]
    for beat in beats:
        wait_for(beat.active, 60, 0.1, "each beat taking its own lock")
    time.sleep(SPLIT_RUN)
    for beat in beats:
        beat.kill()
    sent = [len(log_events(b, "Sending due task")) for b in beats]
    wait_for(lambda: "running" not in Firings.read(chaos_audit).statuses, 30, 0.3, "checks done")
    rows = chaos_audit.rows(
        "SELECT params->>'key' AS key, status, error, extract(epoch FROM started_at) AS t"
        " FROM check_runs WHERE params->>'key' LIKE %s",
        KEY + "%",
    )
    runs: Counter[tuple[str, float]] = Counter()
    duplicates: Counter[tuple[str, float]] = Counter()
    for row in rows:
        entry = "slot" + row["key"].removeprefix(KEY)
        if row["status"] == "ok":
            at = slots.grid_slot(float(row["t"]), INTERVAL, SPLIT_OFFSETS[entry])
            runs[(entry, at)] += 1
        elif row["status"] == "duplicate":
            duplicates[duplicate_slot(row["error"])] += 1
    twice = [s for s, n in runs.items() if n > 1]
    unmatched = [s for s in duplicates if s not in runs]
    print(
        f"\ntwo beats both firing: sent {sent[0]} + {sent[1]}, {len(runs)} slots run,"
        f" {sum(duplicates.values())} duplicates audited, {len(twice)} slots run twice"
    )
    assert {r["status"] for r in rows} <= {"ok", "duplicate"}
    assert twice == [], f"slots run twice: {twice}"
    assert unmatched == [], f"duplicates of slots that never ran: {unmatched}"
    assert all(n == 1 for n in duplicates.values())
    assert len(runs) + sum(duplicates.values()) == len(rows)
    assert min(sent) >= SPLIT_ENTRIES * 3, f"each beat fired: {sent}"  # both fired, many slots
    assert sum(duplicates.values()) >= min(sent) - SPLIT_ENTRIES, "both beats sent each slot"


def duplicate_slot(error: str) -> tuple[str, float]:
    """(entry, slot) a 'duplicate' check run names (slots.describe: '...: <entry> @ <UTC>')."""
    entry, _, at = error.rpartition(": ")[2].partition(" @ ")
    return entry, datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
