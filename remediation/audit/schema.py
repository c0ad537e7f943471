"""Audit schema: migrations (applied by `remediation db upgrade` and at worker start), row ids
made by the writing process, and the one idempotent statement per kind of write."""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

# Advisory lock so two workers starting together do not race on the DDL.
_LOCK_ID = 727_001

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE check_runs (
            id           bigserial PRIMARY KEY,
            task_id      text,
            check_name   text NOT NULL,
            target       text NOT NULL,
            purpose      text NOT NULL DEFAULT 'detect',   -- detect | verify | manual
            params       jsonb NOT NULL DEFAULT '{}',
            status       text NOT NULL,                    -- running | ok | error | rejected
            error        text,
            findings_count integer NOT NULL DEFAULT 0,
            started_at   timestamptz NOT NULL DEFAULT now(),
            finished_at  timestamptz,
            duration_ms  double precision
        );
        CREATE INDEX check_runs_started ON check_runs (started_at DESC);
        CREATE TABLE findings (
            id           bigserial PRIMARY KEY,
            check_run_id bigint NOT NULL REFERENCES check_runs(id),
            check_name   text NOT NULL,
            target       text NOT NULL,
            subject      text NOT NULL DEFAULT '',
            kind         text NOT NULL,
            severity     text NOT NULL,
            observed     text,
            threshold    text,
            summary      text NOT NULL DEFAULT '',
            evidence     jsonb NOT NULL DEFAULT '{}',
            fingerprint  text NOT NULL,
            incident_id  text,
            seen_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX findings_fingerprint ON findings (fingerprint, seen_at DESC);
        CREATE TABLE guard_decisions (
            id              bigserial PRIMARY KEY,
            finding_id      bigint REFERENCES findings(id),
            task_id         text,
            action          text NOT NULL,
            target          text NOT NULL,
            resource        text NOT NULL,
            idempotency_key text,
            decision        text NOT NULL,  -- admitted | suppressed | duplicate | dry_run | unavailable
            guard           text,
            reason          text,
            decided_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX guard_decisions_at ON guard_decisions (decided_at DESC);
        CREATE TABLE action_runs (
            id            bigserial PRIMARY KEY,
            decision_id   bigint REFERENCES guard_decisions(id),
            finding_id    bigint REFERENCES findings(id),
            task_id       text,
            action        text NOT NULL,
            target        text NOT NULL,
            resource      text,
            params        jsonb NOT NULL DEFAULT '{}',
            outcome       text NOT NULL,  -- succeeded | failed | rejected | dry_run
            error         text,
            result        jsonb,
            started_at    timestamptz NOT NULL DEFAULT now(),
            duration_ms   double precision,
            verification  text,           -- recovered | not_recovered | error | skipped
            verify_check_run_id bigint REFERENCES check_runs(id),
            verified_at   timestamptz
        );
        CREATE INDEX action_runs_started ON action_runs (started_at DESC);
        """,
    ),
]

MIGRATIONS.append(
    (
        2,
        """
        CREATE TABLE observations (
            id          bigserial PRIMARY KEY,
            check_name  text NOT NULL,
            target      text NOT NULL,
            metric      text NOT NULL,
            value       double precision NOT NULL,
            observed_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX observations_lookup ON observations (check_name, target, metric, observed_at DESC);
        """,
    )
)

MIGRATIONS.append(
    (
        3,
        """
        -- approvals (issue 14): a decision row may carry what was decided on (the plan, the
        -- approval id, who decided)
        ALTER TABLE guard_decisions ADD COLUMN detail jsonb;
        """,
    )
)

MIGRATIONS.append(
    (
        4,
        """
        -- retention (issue 15): the foreign keys a delete of a parent checks (without an index
        -- every deleted row scans the child table), what the reports and the prune filter on.
        -- On a large existing audit this takes a while (minutes for millions of rows) and
        -- blocks writes meanwhile: workers spool their rows until it is done.
        CREATE INDEX IF NOT EXISTS findings_check_run ON findings (check_run_id);
        CREATE INDEX IF NOT EXISTS findings_seen ON findings (seen_at);
        CREATE INDEX IF NOT EXISTS findings_incident ON findings (incident_id)
            WHERE incident_id IS NOT NULL;
        CREATE INDEX IF NOT EXISTS guard_decisions_finding ON guard_decisions (finding_id);
        CREATE INDEX IF NOT EXISTS action_runs_finding ON action_runs (finding_id);
        CREATE INDEX IF NOT EXISTS action_runs_decision ON action_runs (decision_id);
        CREATE INDEX IF NOT EXISTS action_runs_verify_check_run
            ON action_runs (verify_check_run_id) WHERE verify_check_run_id IS NOT NULL;
        CREATE INDEX IF NOT EXISTS observations_at ON observations (observed_at);
        """,
    )
)

MIGRATIONS.append(
    (
        5,
        """
        -- event sources (issue 16): why a check ran: the event that caused it (a signed
        -- header from `remediation watch`) or the beat slot; NULL for a call by hand.
        ALTER TABLE check_runs ADD COLUMN cause jsonb;
        """,
    )
)

LATEST = MIGRATIONS[-1][0]


def upgrade(conn: psycopg.Connection) -> list[int]:
    """Apply missing migrations in one transaction each; returns the versions applied."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        current = row[0] if row else 0
        for version, ddl in MIGRATIONS:
            if version > current:
                conn.execute(ddl)
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                applied.append(version)
    return applied


def current_version(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT CASE WHEN to_regclass('schema_version') IS NULL THEN 0"
        " ELSE (SELECT coalesce(max(version), 0) FROM schema_version) END"
    ).fetchone()
    return int(row[0]) if row else 0


# --- ids and writes -----------------------------------------------------------------------

ID_EPOCH_MS = 1_704_067_200_000
"""2024-01-01T00:00:00Z: 41 bits of milliseconds from here last until 2093 (unix ms: 2039)."""


class _Ids:
    """Snowflake-like ids: ms since ID_EPOCH_MS << 22 | node (10 bits) << 12 | counter.

    The node is random per process, not the pid: containers on different hosts run the same
    pids. The counter starts at a random value each millisecond, so two processes that do
    share a node rarely meet; a direct insert that meets another row takes a new id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid, self.node, self.ms, self.counter = 0, 0, 0, 0

    def next(self) -> int:
        with self.lock:
            if self.pid != os.getpid():
                self.pid, self.node, self.ms = os.getpid(), random.getrandbits(10), 0
            now = time.time_ns() // 1_000_000 - ID_EPOCH_MS
            if now > self.ms:  # a clock that went back keeps the last millisecond
                self.ms, self.counter = now, random.getrandbits(11)
            elif self.counter < 0xFFF:
                self.counter += 1
            else:
                self.ms, self.counter = self.ms + 1, 0
            return (self.ms << 22) | (self.node << 12) | self.counter


_IDS = _Ids()


def new_id() -> int:
    return _IDS.next()


# One statement per kind of write; a spooled record ({"op", "args"}) replays through the same
# statement with the same (already redacted) arguments, so the spool holds what the table would.
_INSERTS = {
    "check_run": "INSERT INTO check_runs (id, task_id, check_name, target, purpose, params,"
    " status, started_at, cause) VALUES (%(id)s, %(task_id)s, %(check)s, %(target)s,"
    " %(purpose)s, %(params)s, 'running', %(at)s::timestamptz, %(cause)s)",
    "rejected_check": "INSERT INTO check_runs (id, task_id, check_name, target, params, status,"
    " error, started_at, finished_at, duration_ms) VALUES (%(id)s, %(task_id)s, %(check)s,"
    " %(target)s, %(params)s, 'rejected', %(error)s, %(at)s::timestamptz,"
    " %(at)s::timestamptz, 0)",
    "finding": "INSERT INTO findings (id, check_run_id, check_name, target, subject, kind,"
    " severity, observed, threshold, summary, evidence, fingerprint, incident_id, seen_at)"
    " VALUES (%(id)s, %(run_id)s, %(check)s, %(target)s, %(subject)s, %(kind)s, %(severity)s,"
    " %(observed)s, %(threshold)s, %(summary)s, %(evidence)s, %(fingerprint)s,"
    " %(incident_id)s, %(at)s::timestamptz)",
    "decision": "INSERT INTO guard_decisions (id, finding_id, task_id, action, target, resource,"
    " idempotency_key, decision, guard, reason, detail, decided_at) VALUES (%(id)s,"
    " %(finding_id)s, %(task_id)s, %(action)s, %(target)s, %(resource)s, %(idempotency_key)s,"
    " %(decision)s, %(guard)s, %(reason)s, %(detail)s, %(at)s::timestamptz)",
    "action_run": "INSERT INTO action_runs (id, decision_id, finding_id, task_id, action, target,"
    " resource, params, outcome, error, result, duration_ms, verification, started_at)"
    " VALUES (%(id)s, %(decision_id)s, %(finding_id)s, %(task_id)s, %(action)s, %(target)s,"
    " %(resource)s, %(params)s, %(outcome)s, %(error)s, %(result)s, %(duration_ms)s,"
    " %(verification)s, %(at)s::timestamptz)",
    "observation": "INSERT INTO observations (id, check_name, target, metric, value,"
    " observed_at) VALUES (%(id)s, %(check)s, %(target)s, %(metric)s, %(value)s,"
    " %(at)s::timestamptz)",
}
_UPDATES = {
    "finish_check_run": "UPDATE check_runs SET status = %(status)s, findings_count ="
    " %(findings)s, error = %(error)s, finished_at = %(at)s::timestamptz, duration_ms ="
    " %(duration_ms)s WHERE id = %(id)s",
    "verification": "UPDATE action_runs SET verification = %(verification)s,"
    " verify_check_run_id = %(check_run_id)s, verified_at = %(at)s::timestamptz"
    " WHERE id = %(id)s",
}
_JSON_ARGS = frozenset({"params", "evidence", "result", "detail", "cause"})
_DEFAULTS: dict[str, dict[str, Any]] = {"decision": {"detail": None}, "check_run": {"cause": None}}
"""Arguments added after a release: a record spooled by an older version has none."""


class RowMissing(Exception):
    """An update found no row: its insert has not arrived yet (it waits in a spool)."""


def unreachable(exc: BaseException | None) -> bool:
    """PostgreSQL did not answer (or cannot take writes now), as opposed to bad data."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
        return True
    return isinstance(exc, pg_errors.ReadOnlySqlTransaction | pg_errors.AdminShutdown)


def run_write(conn: psycopg.Connection[Any], op: str, args: dict[str, Any]) -> bool:
    """Apply one write; False when an insert met an existing id (already there)."""
    args = {**_DEFAULTS.get(op, {}), **args}
    bound = {k: Jsonb(v) if k in _JSON_ARGS and v is not None else v for k, v in args.items()}
    if op in _INSERTS:
        cur = conn.execute(_INSERTS[op] + " ON CONFLICT (id) DO NOTHING RETURNING id", bound)
        return cur.fetchone() is not None
    cur = conn.execute(_UPDATES[op], bound)
    if cur.rowcount == 0:
        raise RowMissing(op)
    return True
