"""Write and read audit rows. Every value written is redacted first.

One connection pool per process (prefork children get their own after fork).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from remediation.audit import schema
from remediation.errors import AuditError
from remediation.findings import Finding
from remediation.redact import redact, redact_text

_POOLS: dict[tuple[int, str], ConnectionPool] = {}


def _pool(dsn: str) -> ConnectionPool:
    key = (os.getpid(), dsn)
    if key not in _POOLS:
        _POOLS[key] = ConnectionPool(
            dsn,
            min_size=0,
            max_size=4,
            kwargs={"autocommit": True, "application_name": "remediation-audit"},
            timeout=5,  # how long a write waits for a connection before AuditError
            open=True,
        )
    return _POOLS[key]


def close_pools() -> None:
    for key, pool in list(_POOLS.items()):
        if key[0] == os.getpid():
            pool.close()
        del _POOLS[key]


def _text(value: Any) -> str | None:
    return None if value is None else redact_text(str(value))


class AuditStore:
    """The audit trail of one database."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _exec(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        try:
            with _pool(self.dsn).connection() as conn:
                cur = conn.execute(query, params)
                return cur.fetchone() if cur.description else None
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            raise AuditError(f"audit write failed: {type(exc).__name__}") from exc

    def query(
        self, query: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> list[dict[str, Any]]:
        with _pool(self.dsn).connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def upgrade(self) -> list[int]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            return schema.upgrade(conn)

    # --- writes ---------------------------------------------------------------------------

    def start_check_run(
        self, check: str, target: str, params: dict[str, Any], purpose: str, task_id: str | None
    ) -> int:
        row = self._exec(
            "INSERT INTO check_runs (task_id, check_name, target, purpose, params, status)"
            " VALUES (%s, %s, %s, %s, %s, 'running') RETURNING id",
            (task_id, check, target, purpose, Jsonb(redact(params))),
        )
        return int(row[0])

    def finish_check_run(
        self, run_id: int, status: str, findings: int, duration_ms: float, error: str | None = None
    ) -> None:
        self._exec(
            "UPDATE check_runs SET status = %s, findings_count = %s, error = %s,"
            " finished_at = now(), duration_ms = %s WHERE id = %s",
            (status, findings, _text(error), duration_ms, run_id),
        )

    def rejected_check(
        self, check: str, raw: dict[str, Any], error: str, task_id: str | None
    ) -> int:
        row = self._exec(
            "INSERT INTO check_runs (task_id, check_name, target, params, status, error,"
            " finished_at, duration_ms) VALUES (%s, %s, %s, %s, 'rejected', %s, now(), 0)"
            " RETURNING id",
            (task_id, check, str(raw.get("target", "?"))[:64], Jsonb(redact(raw)), _text(error)),
        )
        return int(row[0])

    def add_finding(self, run_id: int, f: Finding, incident_id: str | None) -> int:
        row = self._exec(
            "INSERT INTO findings (check_run_id, check_name, target, subject, kind, severity,"
            " observed, threshold, summary, evidence, fingerprint, incident_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                run_id, f.check, f.target, f.subject, f.kind, f.severity.value,
                _text(f.observed), _text(f.threshold), redact_text(f.summary),
                Jsonb(redact(f.evidence)), f.fingerprint, incident_id,
            ),
        )  # fmt: skip
        return int(row[0])

    def add_decision(
        self,
        *,
        action: str,
        target: str,
        resource: str,
        decision: str,
        guard: str = "",
        reason: str = "",
        finding_id: int | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        row = self._exec(
            "INSERT INTO guard_decisions (finding_id, task_id, action, target, resource,"
            " idempotency_key, decision, guard, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                finding_id, task_id, action, target, resource, idempotency_key,
                decision, guard or None, _text(reason),
            ),
        )  # fmt: skip
        return int(row[0])

    def add_action_run(
        self,
        *,
        action: str,
        target: str,
        resource: str | None,
        params: dict[str, Any],
        outcome: str,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        duration_ms: float = 0.0,
        decision_id: int | None = None,
        finding_id: int | None = None,
        task_id: str | None = None,
        verification: str | None = None,
    ) -> int:
        row = self._exec(
            "INSERT INTO action_runs (decision_id, finding_id, task_id, action, target, resource,"
            " params, outcome, error, result, duration_ms, verification)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                decision_id, finding_id, task_id, action, target, resource,
                Jsonb(redact(params)), outcome, _text(error),
                Jsonb(redact(result)) if result is not None else None, duration_ms, verification,
            ),
        )  # fmt: skip
        return int(row[0])

    def set_verification(
        self, action_run_id: int, verification: str, check_run_id: int | None
    ) -> None:
        self._exec(
            "UPDATE action_runs SET verification = %s, verify_check_run_id = %s,"
            " verified_at = now() WHERE id = %s",
            (verification, check_run_id, action_run_id),
        )

    def record_observation(self, check: str, target: str, metric: str, value: float) -> None:
        """A measured value kept for the next run to compare with (e.g. database size)."""
        self._exec(
            "INSERT INTO observations (check_name, target, metric, value) VALUES (%s, %s, %s, %s)",
            (check, target, metric, value),
        )

    def last_observation(self, check: str, target: str, metric: str) -> tuple[float, Any] | None:
        """(value, observed_at) of the newest observation, or None."""
        rows = self.query(
            "SELECT value, observed_at FROM observations WHERE check_name = %s AND target = %s"
            " AND metric = %s ORDER BY observed_at DESC, id DESC LIMIT 1",
            (check, target, metric),
        )
        return (rows[0]["value"], rows[0]["observed_at"]) if rows else None

    # --- reads ----------------------------------------------------------------------------

    def history(
        self,
        *,
        action: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Guard decisions with the action run (if any) they led to, newest first."""
        return self.query(
            """
            SELECT d.id AS decision_id, d.decided_at, d.action, d.target, d.resource,
                   d.decision, d.guard, d.reason, a.id AS action_run_id, a.outcome,
                   a.error, a.duration_ms, a.verification, d.finding_id
            FROM guard_decisions d LEFT JOIN action_runs a ON a.decision_id = d.id
            WHERE (%(action)s::text IS NULL OR d.action = %(action)s)
              AND (%(target)s::text IS NULL OR d.target = %(target)s)
              AND (%(outcome)s::text IS NULL OR a.outcome = %(outcome)s
                   OR d.decision = %(outcome)s)
              AND (%(since)s::timestamptz IS NULL OR d.decided_at >= %(since)s)
            UNION ALL
            SELECT NULL, a.started_at, a.action, a.target, a.resource, 'rejected', 'params',
                   a.error, a.id, a.outcome, a.error, a.duration_ms, a.verification, NULL
            FROM action_runs a
            WHERE a.decision_id IS NULL
              AND (%(action)s::text IS NULL OR a.action = %(action)s)
              AND (%(target)s::text IS NULL OR a.target = %(target)s)
              AND (%(outcome)s::text IS NULL OR a.outcome = %(outcome)s)
              AND (%(since)s::timestamptz IS NULL OR a.started_at >= %(since)s)
            ORDER BY 2 DESC LIMIT %(limit)s
            """,
            {
                "action": action,
                "target": target,
                "outcome": outcome,
                "since": since,
                "limit": limit,
            },
        )
