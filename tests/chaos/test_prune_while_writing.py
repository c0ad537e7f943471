"""Pruning while a real worker writes (issue 15): a Celery worker writes whole audit trails
(check runs, findings, guard decisions, action runs and their verification) through a real
Redis broker into a real PostgreSQL audit while its own beat task remediation.audit.prune
deletes a seeded backlog of old rows in batches of 100. The races it provokes: new findings
joining an old open incident, actions naming an old finding of that incident (their
verification check runs written mid-prune), actions queued three days ago naming findings
older than REMEDIATION_RETENTION__AUDIT_DAYS (2: those findings stay, within the trigger
reach; before that rule the worker's decisions failed their foreign key), and the prune's
own audit row."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery
from celery.result import AsyncResult

from remediation import signing
from remediation.audit.spool import ACTIVE, CLAIMED
from remediation.context import HEADER_VERSION, Trigger
from remediation.findings import Finding, Severity
from remediation.guards import keys
from remediation.tasks import PRUNE_TASK, TRIGGER_HEADER
from tests.support.audit import ORPHANS_SQL, Audit
from tests.support.base import ROOT
from tests.support.env import TEST_SIGNING_KEY
from tests.support.processes import WorkerProcess
from tests.support.services import RedisServer

RETENTION = {
    "REMEDIATION_RETENTION__BATCH_SIZE": "100",  # the smallest batch: hundreds of DELETEs
    "REMEDIATION_RETENTION__AUDIT_DAYS": "2",
    "REMEDIATION_RETENTION__CHECK_RUNS_DAYS": "1",
    "REMEDIATION_RETENTION__OBSERVATIONS_DAYS": "2",
    "REMEDIATION_VERIFY__ATTEMPTS": "2",
}
QUIET, TRAILS, IN_INCIDENT, LATE, NAMED_OLD = 150_000, 3_000, 200, 40, 10
"""Seeded: check runs that found nothing (2 to 54 days old); whole trails 400+ days old
(check run, finding, decision, action run, its verification run, an observation), the first
IN_INCIDENT of them in an incident still open; LATE findings of three days ago whose actions
were queued then and are delivered only now (after a worker outage). NAMED_OLD actions name
an old finding of the open incident."""
TABLES = ("check_runs", "findings", "guard_decisions", "action_runs", "observations")
SEEDED_BELOW = 10_000_000
"""Seeded ids are below this; every id a process hands out (schema.new_id) is far above."""
JOBS = ["a", "b", "a", "c", "b"]  # a job list with two duplicates
STUBBORN = "stubborn:jobs"
"""A job list with duplicates that dedupe may not touch (not under chaos:*): every check of
it joins the old open incident and its dedupe is refused, so the incident stays open."""
BOUND = 60.0
OLD = "now() - interval '400 days' - g * interval '1 minute'"


def fingerprint(key: str) -> str:
    return Finding(
        check="redis_job_queue",
        target="app",
        subject=key,
        kind="redis_job_queue_duplicates",
        severity=Severity.WARNING,
    ).fingerprint


@dataclass
class Seeded:
    """What the test put in the audit before the worker started."""

    incident: str
    late: dict[str, int]  # job list key -> its finding (three days old)

    @property
    def incident_rows(self) -> dict[str, set[int]]:
        """The open incident's old rows, by table (ids as seed() makes them)."""
        g = range(1, IN_INCIDENT + 1)
        return {
            "check_runs": {1_000_000 + i for i in g} | {2_000_000 + i for i in g},
            "findings": {3_000_000 + i for i in g},
            "guard_decisions": {4_000_000 + i for i in g},
            "action_runs": {5_000_000 + i for i in g},
        }


def seed(conn: psycopg.Connection[Any], run: str) -> Seeded:
    """The backlog (see QUIET, TRAILS, IN_INCIDENT, LATE)."""
    incident = f"{fingerprint(STUBBORN)}-{uuid.uuid4().hex[:8]}"
    conn.execute(
        "INSERT INTO check_runs (id, check_name, target, status, started_at, finished_at)"
        " SELECT g, 'postgres_dead_tuples', 'app', CASE WHEN g %% 7 = 0 THEN 'error' ELSE 'ok'"
        " END, t, t FROM generate_series(1, %s) g,"
        " LATERAL (SELECT now() - interval '2 days' - g * interval '30 seconds' AS t) at",
        (QUIET,),
    )
    for base, purpose in ((1_000_000, "detect"), (2_000_000, "verify")):
        conn.execute(
            "INSERT INTO check_runs (id, check_name, target, purpose, status, findings_count,"
            f" started_at) SELECT %s + g, 'redis_job_queue', 'app', %s, 'ok', 1, {OLD}"
            " FROM generate_series(1, %s) g",
            (base, purpose, TRAILS),
        )
    _seed_trails(conn, incident)
    late = {f"chaos:late:{run}:{n}": 8_000_000 + n for n in range(LATE)}
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    for n, (key, finding) in enumerate(late.items()):
        at = three_days_ago - timedelta(seconds=n)
        conn.execute(
            "INSERT INTO check_runs (id, check_name, target, status, findings_count, started_at,"
            " finished_at) VALUES (%s, 'redis_job_queue', 'app', 'ok', 1, %s, %s)",
            (7_000_000 + n, at, at),
        )
        conn.execute(
            "INSERT INTO findings (id, check_run_id, check_name, target, subject, kind, severity,"
            " fingerprint, seen_at) VALUES (%s, %s, 'redis_job_queue', 'app', %s,"
            " 'redis_job_queue_duplicates', 'warning', %s, %s)",
            (finding, 7_000_000 + n, key, fingerprint(key), at),
        )
    return Seeded(incident, late)


def _seed_trails(conn: psycopg.Connection[Any], incident: str) -> None:
    """TRAILS findings, decisions, action runs (verified) and observations, 400+ days old."""
    conn.execute(
        "INSERT INTO findings (id, check_run_id, check_name, target, subject, kind, severity,"
        " fingerprint, incident_id, seen_at) SELECT 3000000 + g, 1000000 + g,"
        " 'redis_job_queue', 'app', %s, 'redis_job_queue_duplicates', 'warning', %s,"
        f" CASE WHEN g <= %s THEN %s END, {OLD} FROM generate_series(1, %s) g",
        (STUBBORN, fingerprint(STUBBORN), IN_INCIDENT, incident, TRAILS),
    )
    conn.execute(
        "INSERT INTO guard_decisions (id, finding_id, task_id, action, target, resource,"
        " decision, decided_at) SELECT 4000000 + g, 3000000 + g, 'old-' || g,"
        f" 'dedupe_job_queue', 'app', 'app/' || %s, 'admitted', {OLD}"
        " FROM generate_series(1, %s) g",
        (STUBBORN, TRAILS),
    )
    conn.execute(
        "INSERT INTO action_runs (id, decision_id, finding_id, task_id, action, target,"
        " resource, outcome, verification, verify_check_run_id, started_at)"
        " SELECT 5000000 + g, 4000000 + g, 3000000 + g, 'old-' || g, 'dedupe_job_queue', 'app',"
        f" 'app/' || %s, 'succeeded', 'recovered', 2000000 + g, {OLD}"
        " FROM generate_series(1, %s) g",
        (STUBBORN, TRAILS),
    )
    conn.execute(
        "INSERT INTO observations (id, check_name, target, metric, value, observed_at)"
        f" SELECT 6000000 + g, 'postgres_database_size', 'app', 'database_bytes', g, {OLD}"
        " FROM generate_series(1, %s) g",
        (TRAILS,),
    )


def record_inserts(conn: psycopg.Connection[Any]) -> None:
    """From now on every row inserted into an audit table is noted (table, id) in
    test_written, which the prune never touches: what was written can be checked to be
    still there."""
    conn.execute("CREATE TABLE test_written (tbl text NOT NULL, id bigint NOT NULL)")
    conn.execute(
        "CREATE FUNCTION test_note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO test_written VALUES (TG_TABLE_NAME, NEW.id); RETURN NEW; END $$"
    )
    for table in TABLES:
        conn.execute(
            f"CREATE TRIGGER test_note AFTER INSERT ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION test_note()"
        )


def queued_header(trigger: Trigger, task: str, kwargs: dict[str, Any], issued: float) -> Any:
    """The trigger header a worker signed at `issued` (epoch) when its check found the
    condition (tasks.dispatch_via), for a message delivered only now."""
    fields = {**trigger.__dict__, "v": HEADER_VERSION, "issued_at": round(issued, 3)}
    signed = {"task": task, "kwargs": kwargs, **fields}
    return {**fields, "sig": signing.sign(TEST_SIGNING_KEY.encode(), "trigger", signed)}


@dataclass
class Stream:
    """Real tasks sent through the broker while the prune runs."""

    app: Celery
    jobs: redis.Redis
    seeded: Seeded
    run: str
    fresh: dict[str, str] = field(default_factory=dict)  # check task id -> job list key
    stubborn: list[str] = field(default_factory=list)  # check task ids on STUBBORN
    late: dict[str, int] = field(default_factory=dict)  # action task id -> 3-day-old finding
    named_old: dict[str, int] = field(default_factory=dict)  # action task id -> old finding
    results: list[AsyncResult] = field(default_factory=list)

    def send(self, n: int) -> None:
        """Round n: a check of a fresh job list with duplicates (finding, incident, dedupe,
        verification), a check of STUBBORN (joins the old incident), a queued action."""
        key = f"chaos:fresh:{self.run}:{n}"
        self.jobs.rpush(key, *JOBS)
        self.fresh[self._send("check.redis_job_queue", {"target": "app", "key": key})] = key
        stubborn = self._send("check.redis_job_queue", {"target": "app", "key": STUBBORN})
        self.stubborn.append(stubborn)
        if n % 2 == 0 and n // 2 < LATE:  # spread over the prune's passes
            late, finding = list(self.seeded.late.items())[n // 2]
            incident = f"{fingerprint(late)}-{uuid.uuid4().hex[:8]}"
            self.late[self._queued(late, finding, late, incident)] = finding
        if n % 6 == 3 and n // 6 < NAMED_OLD:
            finding = 3_000_001 + n // 6  # of the open incident; verified on STUBBORN
            key = f"chaos:named-old:{self.run}:{n}"
            self.named_old[self._queued(key, finding, STUBBORN, self.seeded.incident)] = finding

    def _queued(self, key: str, finding: int, checked: str, incident: str) -> str:
        """A dedupe of `key` answering `finding`, its header signed three days ago,
        verified by re-checking the job list `checked`."""
        self.jobs.rpush(key, *JOBS)
        kwargs = {"target": "app", "key": key}
        trigger = Trigger(
            finding_id=finding,
            check="redis_job_queue",
            check_params={"target": "app", "key": checked},
            fingerprint=fingerprint(checked),
            incident=incident,
        )
        task = "remediation.act.dedupe_job_queue"
        header = queued_header(trigger, task, kwargs, time.time() - 3 * 86400)
        result = self.app.send_task(task, kwargs=kwargs, headers={TRIGGER_HEADER: header})
        self.results.append(result)
        return str(result.id)

    def _send(self, name: str, kwargs: dict[str, Any]) -> str:
        result = self.app.send_task(f"remediation.{name}", kwargs=kwargs)
        self.results.append(result)
        return str(result.id)


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    """`remediation --json ARGS` as an operator runs it."""
    binary = str(Path(ROOT) / ".venv" / "bin" / "remediation")
    done = subprocess.run(
        [binary, "--json", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def test_pruning_while_a_real_worker_writes_loses_nothing_that_should_stay(
    chaos_env: dict[str, str],
    chaos_audit: Audit,
    state_redis: RedisServer,
    side_redis: RedisServer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Every row a real worker writes during a prune of ~170,000 old rows in batches of 100
    stays, as do the open incident's rows and findings a queued action names; the backlog
    goes exactly as the dry run counted; no foreign key fails, nothing stays spooled."""
    env = {**chaos_env, **RETENTION}
    run = uuid.uuid4().hex[:8]
    with psycopg.connect(chaos_audit.dsn, autocommit=True) as conn:
        seeded = seed(conn, run)
        record_inserts(conn)
    state = redis.Redis.from_url(state_redis.url(0), decode_responses=True)
    state.set(keys.incident(fingerprint(STUBBORN)), seeded.incident, ex=3600)
    jobs = redis.Redis.from_url(side_redis.url(0))
    jobs.rpush(STUBBORN, *JOBS)
    dry = cli(env, "db", "prune")
    assert dry["applied"] is False and dry["kept_incidents"] == 1 and not dry["skipped"]
    before = seeded_counts(chaos_audit)
    worker = start_worker(env, concurrency=3)
    app = Celery(broker=env["REMEDIATION_BROKER_URL"], backend=env["REMEDIATION_RESULT_BACKEND"])
    stream = Stream(app, jobs, seeded, run)
    try:
        started = time.monotonic()
        pruned = prune_under(stream, chaos_audit)
        failed = [(r.id, r.state) for r in stream.results if r.state != "SUCCESS"]
        print(
            f"\nprune of {sum(pruned['counts'].values())} rows in {pruned['batches']} batches:"
            f" {pruned['seconds']:.1f} s; {len(stream.results)} tasks sent, all done in"
            f" {time.monotonic() - started:.1f} s"
        )
    finally:
        app.close()
        jobs.close()
    log = worker.log()
    for bad in ("ForeignKeyViolation", "foreign key", "raised unexpected", "spooled"):
        assert bad not in log, log[log.find(bad) - 2000 : log.find(bad) + 1000]
    assert failed == []
    assert pruned["skipped"] is None and pruned["counts"] == dry["counts"], (pruned, dry)
    after = seeded_counts(chaos_audit)
    assert {t: before[t] - after[t] for t in TABLES} == dry["counts"]
    assert cli(env, "db", "prune")["counts"] == dict.fromkeys(TABLES, 0)  # nothing old is left
    assert_everything_written_stays(chaos_audit, stream)
    assert_incident_stays(chaos_audit, state, seeded)
    assert_one_prune_row(chaos_audit, dry["counts"])
    assert orphans(chaos_audit) == 0
    state.close()
    spool = Path(env["REMEDIATION_AUDIT__SPOOL_DIR"])
    left = [p.name for p in spool.iterdir()] if spool.exists() else []
    assert [n for n in left if n.endswith((ACTIVE, CLAIMED))] == []


def prune_under(stream: Stream, audit: Audit) -> dict[str, Any]:
    """Send rounds (every 0.1 s) from before the worker's prune starts until after it ends;
    returns the prune's result once every task sent has finished."""
    stop = threading.Event()

    def send() -> None:
        n = 0
        while not stop.is_set():
            stream.send(n)
            n += 1
            time.sleep(0.1)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:  # the worker is writing whole trails before the prune starts
        audit.wait_rows(
            f"SELECT 1 FROM action_runs WHERE verification = 'recovered' AND id > {SEEDED_BELOW}",
            timeout=BOUND,
        )
        pruned: dict[str, Any] = stream.app.send_task(PRUNE_TASK).get(timeout=BOUND)
        time.sleep(0.5)
    finally:
        stop.set()
        sender.join(10)
    for result in stream.results:
        result.get(timeout=BOUND, propagate=False)
    return pruned


def seeded_counts(audit: Audit) -> dict[str, int]:
    """Rows per table the test seeded that are still there."""
    return {
        t: int(audit.rows(f"SELECT count(*) AS n FROM {t} WHERE id < %s", SEEDED_BELOW)[0]["n"])
        for t in TABLES
    }


def assert_everything_written_stays(audit: Audit, stream: Stream) -> None:
    """Every row inserted since the worker started is there, and each task sent left its
    trail: checks their runs and findings, actions their decisions and verified runs."""
    lost = audit.rows(
        "SELECT w.tbl, count(*) AS n FROM test_written w WHERE NOT EXISTS ("
        " SELECT 1 FROM check_runs WHERE w.tbl = 'check_runs' AND id = w.id UNION ALL"
        " SELECT 1 FROM findings WHERE w.tbl = 'findings' AND id = w.id UNION ALL"
        " SELECT 1 FROM guard_decisions WHERE w.tbl = 'guard_decisions' AND id = w.id UNION ALL"
        " SELECT 1 FROM action_runs WHERE w.tbl = 'action_runs' AND id = w.id UNION ALL"
        " SELECT 1 FROM observations WHERE w.tbl = 'observations' AND id = w.id)"
        " GROUP BY w.tbl"
    )
    assert lost == []
    fresh = audit.wait_rows(  # the dedupes the checks sent may still be verifying
        "SELECT c.task_id, f.subject, d.decision, a.outcome, a.verification, v.purpose"
        " FROM check_runs c JOIN findings f ON f.check_run_id = c.id"
        " JOIN guard_decisions d ON d.finding_id = f.id JOIN action_runs a ON a.decision_id = d.id"
        " JOIN check_runs v ON v.id = a.verify_check_run_id WHERE c.task_id = ANY(%s)",
        list(stream.fresh),
        n=len(stream.fresh),
        timeout=BOUND,
    )
    assert sorted((r["task_id"], r["subject"]) for r in fresh) == sorted(stream.fresh.items())
    assert {(r["decision"], r["outcome"], r["verification"], r["purpose"]) for r in fresh} == {
        ("admitted", "succeeded", "recovered", "verify")
    }
    for queued, verdict in ((stream.late, "recovered"), (stream.named_old, "not_recovered")):
        runs = audit.rows(
            "SELECT a.task_id, a.finding_id, d.finding_id AS decided_on, a.verification, v.purpose"
            " FROM action_runs a JOIN guard_decisions d ON d.id = a.decision_id"
            " JOIN findings f ON f.id = a.finding_id JOIN check_runs c ON c.id = f.check_run_id"
            " JOIN check_runs v ON v.id = a.verify_check_run_id WHERE a.task_id = ANY(%s)",
            list(queued),
        )
        assert {r["task_id"]: r["finding_id"] for r in runs} == queued
        assert all(r["decided_on"] == r["finding_id"] for r in runs)
        assert {(r["verification"], r["purpose"]) for r in runs} == {(verdict, "verify")}


def assert_incident_stays(audit: Audit, state: redis.Redis, seeded: Seeded) -> None:
    """The incident is still open, every old row of it is there, and every check of
    STUBBORN joined it (its dedupe refused: not a configured job list)."""
    assert state.get(keys.incident(fingerprint(STUBBORN))) == seeded.incident
    for table, ids in seeded.incident_rows.items():
        found = audit.rows(f"SELECT id FROM {table} WHERE id = ANY(%s)", list(ids))
        assert {r["id"] for r in found} == ids, table
    joined = audit.rows(
        "SELECT f.incident_id, d.decision FROM findings f JOIN check_runs c ON c.id = f.check_run_id"
        " JOIN guard_decisions d ON d.finding_id = f.id WHERE c.id > %s AND c.purpose = 'detect'"
        " AND f.subject = %s",
        SEEDED_BELOW,
        STUBBORN,
    )
    assert len(joined) >= 10 and {(r["incident_id"], r["decision"]) for r in joined} == {
        (seeded.incident, "refused")
    }


def assert_one_prune_row(audit: Audit, counted: dict[str, int]) -> None:
    """The worker audited its prune once: a 'maintenance' check run with the counts."""
    rows = audit.rows(
        "SELECT status, purpose, params FROM check_runs WHERE check_name = 'audit_prune'"
    )
    assert [(r["status"], r["purpose"], r["params"]["counts"]) for r in rows] == [
        ("ok", "maintenance", counted)
    ]


def orphans(audit: Audit) -> int:
    return int(audit.rows(ORPHANS_SQL)[0]["n"])
