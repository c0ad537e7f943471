"""Audit schema migrations, applied in order by `remediation db upgrade` and at worker start."""

from __future__ import annotations

import psycopg

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
