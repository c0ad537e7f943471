"""Beat precision: when a slot was due vs when beat sent it and when the worker started it,
and how same-interval entries are spread over their interval.

One private redis-server (state, broker, results), a scratch audit database, one
`celery worker -c 4` and one real `celery -A remediation beat` (remediation.beat's
SlotScheduler, default REMEDIATION_CELERY__BEAT_MAX_LOOP_INTERVAL) with ENTRIES interval
entries of INTERVAL seconds each (the redis_job_queue check on an empty list), run for
SECONDS, twice: spread (the default) and all pinned (what Celery does without spreading:
every entry on the same second).

* due: the slot, ``offset + k * INTERVAL`` (epoch), offset from remediation.slots'
  spread_offsets for the same schedule (0 when pinned); the slot header carries the same
  number, rounded to the second.
* sent: the beat's "Sending due task <entry>" log line's timestamp (JSON log); lag = sent -
  due, attributed to the latest slot at or before it (lags are far below one interval).
* started: the check run's started_at in the audit (worker received, dequeued and began);
  lag = started - due of the same slot.
* spread: per slot period, the most firings sent within one wall-clock second, and the
  smallest gap between two consecutive firings.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery.schedules import schedule

from bench import stats
from bench.pipeline import admin_dsn, worker_env
from remediation import slots
from tests.support.audit import Audit
from tests.support.processes import BeatProcess, WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database

ENTRIES = int(os.environ.get("REMEDIATION_BENCH_BEAT_ENTRIES", "20"))
INTERVAL = int(os.environ.get("REMEDIATION_BENCH_BEAT_INTERVAL", "10"))
SECONDS = int(os.environ.get("REMEDIATION_BENCH_BEAT_SECONDS", "60"))


def summary(values: list[float]) -> dict[str, Any]:
    return stats.summary(values, tail=0.99)


def schedule_module(prefix: str, pinned: bool) -> str:
    pin = ", 'pin': True" if pinned else ""
    return (
        "SCHEDULE = {\n"
        + "".join(
            f"    'e{i:02d}': {{'task': 'remediation.check.redis_job_queue', "
            f"'schedule': {INTERVAL}, 'kwargs': {{'target': 'self', 'key': '{prefix}{i:02d}'}}"
            f"{pin}}},\n"
            for i in range(ENTRIES)
        )
        + "}\n"
    )


def offsets(pinned: bool) -> dict[str, int]:
    names = [f"e{i:02d}" for i in range(ENTRIES)]
    entries = {n: {"schedule": schedule(INTERVAL)} for n in names}
    return slots.spread_offsets(entries, set(names) if pinned else set())


@contextlib.contextmanager
def running(pinned: bool) -> Iterator[tuple[BeatProcess, Audit, str, float]]:
    """A worker and a beat with the schedule; yields (beat, audit, key prefix, start)."""
    with contextlib.ExitStack() as ex:
        server = RedisServer().start()
        ex.callback(server.stop)
        audit = as_url(ex.enter_context(scratch_database(admin_dsn(), "rem_bench_beat")))
        from remediation.audit.store import AuditStore

        AuditStore(audit).upgrade()
        prefix = f"beat_{uuid.uuid4().hex[:6]}_"
        module_dir = Path(tempfile.mkdtemp(prefix="rem-bench-beat-"))
        (module_dir / "bench_beat_schedule.py").write_text(schedule_module(prefix, pinned))
        env = worker_env(
            server,
            audit,
            [],
            REMEDIATION_SCHEDULE_MODULE="bench_beat_schedule",
            PYTHONPATH=str(module_dir),
            REMEDIATION_CELERY__REDBEAT_LOCK_TIMEOUT="10",
        )
        worker = WorkerProcess(env, "bench-beat", concurrency=4).start()
        ex.callback(worker.stop)
        start = time.time()
        beat = BeatProcess(env, "bench-beat").start()
        ex.callback(beat.stop)
        yield beat, Audit(audit), prefix, start


def sends(beat: BeatProcess) -> list[tuple[str, float]]:
    """(entry, epoch) of each "Sending due task <entry> (<task>)" line of the beat's log."""
    marker = "Sending due task "
    return [(e.split(marker, 1)[1].split(" ", 1)[0], at) for e, at in beat.events(marker)]


def measure(pinned: bool) -> dict[str, Any]:
    offs = offsets(pinned)
    with running(pinned) as (beat, audit, prefix, start):
        time.sleep(SECONDS)
        beat.stop()
        time.sleep(2)  # the last messages reach the worker
        sent = sends(beat)
        rows = audit.rows(
            "SELECT params->>'key' AS key, extract(epoch FROM started_at) AS t FROM check_runs"
            " WHERE params->>'key' LIKE %s",
            prefix + "%",
        )
    warm = start + INTERVAL  # entries stored at start first fall due one interval later
    send_lag: list[float] = []
    per_slot: dict[float, list[float]] = {}
    for entry, at in sent:
        if entry not in offs:  # the internal approvals.expire entry
            continue
        due = slots.grid_slot(at, INTERVAL, offs[entry])
        if due < warm:
            continue
        send_lag.append(at - due)
        period = slots.grid_slot(at, INTERVAL, 0)
        per_slot.setdefault(period, []).append(at)
    start_lag = []
    for row in rows:
        entry = "e" + row["key"].removeprefix(prefix)
        t = float(row["t"])
        due = slots.grid_slot(t, INTERVAL, offs[entry])
        if due >= warm:
            start_lag.append(t - due)
    busiest, closest = [], []
    for times in per_slot.values():
        times.sort()
        seconds: dict[int, int] = {}
        for t in times:
            seconds[int(t)] = seconds.get(int(t), 0) + 1
        busiest.append(max(seconds.values()))
        closest.extend(b - a for a, b in itertools.pairwise(times))
    return {
        "firings": len(send_lag),
        "sent_minus_due_s": summary(send_lag),
        "started_minus_due_s": summary(start_lag),
        "most_sent_in_one_second": max(busiest),
        "smallest_gap_between_firings_s": round(min(closest), 3) if closest else None,
        "distinct_offsets": len(set(offs.values())),
    }


def run() -> dict[str, Any]:
    return {
        "entries": ENTRIES,
        "interval_s": INTERVAL,
        "seconds": SECONDS,
        "spread": measure(pinned=False),
        "pinned": measure(pinned=True),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
