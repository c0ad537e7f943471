"""`remediation watch --source celery`: a watched worker lost -> the celery_workers check run.

A private redis-server (the remediator's state, broker and results on dbs 0-2; the watched
cluster on db 4), a scratch audit database (the configured PostgreSQL, else a private one),
one remediation worker (`celery worker -c 2`) and one `remediation watch --source celery`,
no beat. For each sample a fresh watched worker (tests/support/celery_workers.py) is
started, given 2.5 s for its heartbeat to reach the watcher, then:

* kill: SIGKILL of the worker and its pool (no worker-offline is ever sent); the event is
  the heartbeat gap, so the time is about REMEDIATION_WATCH__HEARTBEAT_GAP_SECONDS minus
  the time since its last heartbeat (workers beat every 2 s), measured with the default
  gap (10 s) and with 3 s;
* stop: SIGTERM (warm shutdown; the worker says worker-offline).

Timed from just before the signal to the check run's started_at (the check begins) and to
its finished_at (the ping of the cluster waits its 1.5 s timeout, then
celery_workers_down is written). The beat's sweep of celery_workers, the baseline, runs
every 60 s: 30 s mean, 60 s worst, analytic.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.celery_workers import sleeping_worker
from tests.support.env import process_env
from tests.support.processes import WatchProcess, WorkerProcess
from tests.support.servers import private_postgres
from tests.support.services import RedisServer, as_url, scratch_database

SAMPLES = int(os.environ.get("REMEDIATION_BENCH_WATCH_CELERY_N", "5"))
WATCHED_DB = 4
RUN = (
    "SELECT c.started_at, c.finished_at, f.kind FROM check_runs c"
    " LEFT JOIN findings f ON f.check_run_id = c.id"
    " WHERE c.check_name = 'celery_workers' AND c.cause->>'source' = 'celery'"
    " AND c.cause->>'kind' LIKE %s AND c.started_at > to_timestamp(%s)"
    " AND c.finished_at IS NOT NULL"
)


@contextlib.contextmanager
def _admin() -> Iterator[str]:
    explicit = os.environ.get("REMEDIATION_TEST_PG_DSN")
    if explicit:
        yield explicit
    else:
        with private_postgres() as dsn:
            yield dsn


def _sample(
    tmp: Path, server: RedisServer, audit: str, name: str, sig: int, kind: str
) -> tuple[float, float]:
    worker = sleeping_worker(tmp, server, audit, name, WATCHED_DB).start()
    try:
        time.sleep(2.5)  # its heartbeat reaches the watcher
        at = time.time()
        assert worker.proc is not None
        os.killpg(worker.proc.pid, sig)
        worker.proc.wait(30)
        (row,) = Audit(audit).wait_rows(RUN, f"%{kind}%", at)[:1]
        if row["kind"] != "celery_workers_down":
            raise RuntimeError(f"the check found {row['kind']!r}, not celery_workers_down")
        return row["started_at"].timestamp() - at, row["finished_at"].timestamp() - at
    finally:
        worker.stop()


def _series(
    tmp: Path, server: RedisServer, audit: str, gap: float, sig: int, kind: str
) -> dict[str, Any]:
    env = process_env(
        server,
        audit,
        REMEDIATION_WORKERS__BROKER_URL=server.url(WATCHED_DB),
        REMEDIATION_WATCH__HEARTBEAT_GAP_SECONDS=str(gap),
        REMEDIATION_WATCH__SOURCES='["celery"]',
    )
    remediator = WorkerProcess(env, f"bench-rem-{kind}-{gap}").start()
    watcher = WatchProcess(env, f"bench-watch-{kind}-{gap}", sources=["celery"]).start()
    try:
        wait_for(lambda: watcher.active("celery"), 60, 0.2, "the watcher")
        samples = [
            _sample(tmp, server, audit, f"w{i}-{kind}-{int(gap)}", sig, kind)
            for i in range(SAMPLES)
        ]
    finally:
        watcher.stop()
        remediator.stop()
    started, finished = [s for s, _ in samples], [f for _, f in samples]
    return {
        "gap_seconds": gap,
        "samples": len(samples),
        "started_s": {"median": statistics.median(started), "max": max(started)},
        "finished_s": {"median": statistics.median(finished), "max": max(finished)},
        "all": [[round(s, 2), round(f, 2)] for s, f in samples],
    }


def run() -> dict[str, Any]:
    server = RedisServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="rem-bench-watch-celery-"))
    try:
        with _admin() as admin, scratch_database(admin, "rem_bench_watch") as dsn:
            audit = as_url(dsn)
            from remediation.audit.store import AuditStore

            AuditStore(audit).upgrade()
            return {
                "kill_default_gap": _series(
                    tmp, server, audit, 10, signal.SIGKILL, "heartbeat_gap"
                ),
                "kill_gap_3": _series(tmp, server, audit, 3, signal.SIGKILL, "heartbeat_gap"),
                "stop": _series(tmp, server, audit, 10, signal.SIGTERM, "worker-offline"),
            }
    finally:
        server.stop()


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
