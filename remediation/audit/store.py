"""Write and read audit rows. Every value written is redacted first.

The PostgreSQL store: its connections are remediation.audit.connection (one pool per
process), its write path remediation.audit.writer (direct, or through the local spool while
PostgreSQL does not answer, replayed later with the same ids and times).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from remediation.audit import schema
from remediation.audit.connection import close_pools as close_pools  # re-exported
from remediation.audit.connection import connection_failed as connection_failed  # re-exported
from remediation.audit.connection import discard_pool, pool, where
from remediation.audit.schema import new_id, unreachable
from remediation.audit.spool import Spool
from remediation.audit.writer import DOWN_SECONDS as DOWN_SECONDS  # re-exported
from remediation.audit.writer import RowWriter
from remediation.errors import AuditError
from remediation.findings import Finding
from remediation.logging import get_logger
from remediation.redact import bounded_text, redact, redact_text, serialized_size, truncated

if TYPE_CHECKING:
    from remediation.settings import Settings


def _now() -> str:
    return datetime.now(UTC).isoformat()


TEXT_MAX = 4000
"""Characters of a reason, error or summary an audit row keeps (redacted first, then cut)."""
JSON_MAX_BYTES = 65536
"""A params or result value larger than this (as JSON) is stored as size + sha256 + prefix."""


def audit_text(value: Any) -> str | None:
    return None if value is None else bounded_text(redact_text(str(value)), TEXT_MAX)


def audit_json(value: Any) -> Any:
    """value redacted, or its truncated form when it is too big to keep whole."""
    masked = redact(value)
    if serialized_size(masked) > JSON_MAX_BYTES:
        return truncated(value)
    return masked


class AuditStore:
    """The audit trail of one database, with a local spool for outages when spool_dir is set.

    Without spool_dir a write PostgreSQL does not take raises AuditError (as before)."""

    def __init__(
        self, dsn: str, spool_dir: str | os.PathLike[str] | None = None, spool_max_mb: int = 512
    ) -> None:
        self.dsn = dsn
        self.spool = Spool(spool_dir, spool_max_mb) if spool_dir is not None else None
        self.log = get_logger("remediation.audit")
        self._writer = RowWriter(dsn, self.spool, self.log)

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditStore:
        """The store a worker uses: REMEDIATION_AUDIT_DSN with REMEDIATION_AUDIT__SPOOL_*."""
        return cls(
            settings.audit_dsn.get_secret_value(),
            spool_dir=settings.audit.spool_dir,
            spool_max_mb=settings.audit.spool_max_mb,
        )

    def replay_spool(self, wait: float = 30.0) -> int:
        """Replay the spool now (e.g. from the CLI); returns how many records were applied."""
        if self.spool is None:
            return 0
        result = self._writer.replay(wait)
        if result is None:
            raise AuditError(f"another process kept the audit spool locked for {wait:g} s")
        if result.stopped:
            raise AuditError(f"{where(self.dsn)} unreachable; {result.kept} record(s) stay spooled")
        return result.applied

    def query(
        self, query: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> list[dict[str, Any]]:
        try:
            with pool(self.dsn).connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query, params)
                return cur.fetchall()
        except psycopg.errors.UndefinedTable as exc:
            raise AuditError(
                f"{where(self.dsn)} has no audit tables: run `remediation db upgrade`"
            ) from exc
        except psycopg.Error as exc:
            if not unreachable(exc):
                raise
            discard_pool(self.dsn)
            raise connection_failed(self.dsn, exc) from exc

    def upgrade(self) -> list[int]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise connection_failed(self.dsn, exc) from exc
        with conn:
            return schema.upgrade(conn)

    # --- writes ---------------------------------------------------------------------------

    def _insert(self, op: str, **values: Any) -> int:
        """Write a new row with its id and event time from this process; returns its id (a
        new one when another process had taken the first)."""
        args: dict[str, Any] = {"id": new_id(), **values, "at": _now()}
        self._writer.write(op, args)
        return int(args["id"])

    def start_check_run(
        self,
        check: str,
        target: str,
        params: dict[str, Any],
        purpose: str,
        task_id: str | None,
        cause: dict[str, Any] | None = None,
    ) -> int:
        return self._insert(
            "check_run",
            task_id=task_id,
            check=check,
            target=target,
            purpose=purpose,
            params=audit_json(params),
            cause=audit_json(cause) if cause is not None else None,
        )

    def finish_check_run(
        self, run_id: int, status: str, findings: int, duration_ms: float, error: str | None = None
    ) -> None:
        self._writer.write(
            "finish_check_run",
            {
                "id": run_id,
                "status": status,
                "findings": findings,
                "error": audit_text(error),
                "duration_ms": duration_ms,
                "at": _now(),
            },
        )

    def rejected_check(
        self, check: str, raw: dict[str, Any], error: str, task_id: str | None
    ) -> int:
        return self._insert(
            "rejected_check",
            task_id=task_id,
            check=check,
            target=redact_text(str(raw.get("target", "?")))[:64],
            params=audit_json(raw),
            error=audit_text(error),
        )

    def add_finding(self, run_id: int, f: Finding, incident_id: str | None) -> int:
        return self._insert(
            "finding",
            run_id=run_id,
            check=f.check,
            target=f.target,
            subject=f.subject,
            kind=f.kind,
            severity=f.severity.value,
            observed=audit_text(f.observed),
            threshold=audit_text(f.threshold),
            summary=audit_text(f.summary),
            evidence=audit_json(f.evidence),
            fingerprint=f.fingerprint,
            incident_id=incident_id,
        )

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
        detail: dict[str, Any] | None = None,
    ) -> int:
        return self._insert(
            "decision",
            finding_id=finding_id,
            task_id=task_id,
            action=action,
            target=target,
            resource=resource,
            idempotency_key=idempotency_key,
            decision=decision,
            guard=guard or None,
            reason=audit_text(reason),
            detail=audit_json(detail) if detail is not None else None,
        )

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
        return self._insert(
            "action_run",
            decision_id=decision_id,
            finding_id=finding_id,
            task_id=task_id,
            action=action,
            target=target,
            resource=resource,
            params=audit_json(params),
            outcome=outcome,
            error=audit_text(error),
            result=audit_json(result) if result is not None else None,
            duration_ms=duration_ms,
            verification=verification,
        )

    def set_verification(
        self, action_run_id: int, verification: str, check_run_id: int | None
    ) -> None:
        values = {"verification": verification, "check_run_id": check_run_id, "at": _now()}
        self._writer.write("verification", {"id": action_run_id, **values})

    def finished_run(self, task_id: str) -> dict[str, Any] | None:
        """The newest succeeded or failed action run of a task (id, outcome, result,
        verification), or None (also while unreachable: the caller acts as if none)."""
        rows = self._newest(
            "SELECT id, outcome, result, verification FROM action_runs WHERE task_id = %s"
            " AND outcome IN ('succeeded', 'failed') ORDER BY id DESC LIMIT 1",
            (task_id,),
        )
        return rows[0] if rows else None

    def record_observation(self, check: str, target: str, metric: str, value: float) -> None:
        """A measured value kept for the next run to compare with (e.g. database size)."""
        self._insert("observation", check=check, target=target, metric=metric, value=value)

    def last_observation(self, check: str, target: str, metric: str) -> tuple[float, Any] | None:
        """(value, observed_at) of the newest observation, or None (also while unreachable)."""
        rows = self._newest(
            "SELECT value, observed_at FROM observations WHERE check_name = %s"
            " AND target = %s AND metric = %s ORDER BY observed_at DESC, id DESC LIMIT 1",
            (check, target, metric),
        )
        return (rows[0]["value"], rows[0]["observed_at"]) if rows else None

    def _newest(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        """A read a worker decides on: after the spool is drained (a spooled row would be
        missed otherwise); nothing while the audit is down."""
        if self.spool is not None:
            if self._writer.down() or not self._writer.drain():
                return []
        try:
            return self.query(query, params)
        except AuditError:
            self._writer.mark_down()
            return []

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
