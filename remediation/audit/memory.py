"""An audit store in this process's memory: the same protocol as the PostgreSQL store.

For the unit tier (the runner, playbook and guards tested in-process, no server) and for dry
runs that need no database. Values are redacted and bounded exactly as the PostgreSQL store
does before writing; references are checked as the schema's foreign keys check them (a
finding needs its check run, a decision its finding...), raising AuditError like a refused
write. Rows are kept per table, by id, under the names the writes use.
"""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from remediation.audit.store import audit_json, audit_text
from remediation.errors import AuditError
from remediation.findings import Finding
from remediation.outcomes import CheckStatus, Decision, Outcome, Verification
from remediation.redact import redact_text

if TYPE_CHECKING:
    from remediation.audit.protocol import AuditTrail
    from remediation.audit.store import AuditStore

TABLES = ("check_runs", "findings", "guard_decisions", "action_runs", "observations")


class MemoryAuditStore:
    """Audit rows in dicts, one per table: ``store.tables["guard_decisions"][id]``."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in TABLES}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        """The rows of a table in the order written, those whose columns equal ``where``."""
        return [
            row
            for row in self.tables[table].values()
            if all(row.get(k) == v for k, v in where.items())
        ]

    def _insert(self, table: str, row: dict[str, Any], **refs: tuple[str, int | None]) -> int:
        """Add a row after checking its references (column: (table, id)); returns its id."""
        with self._lock:
            for column, (other, ref) in refs.items():
                if ref is not None and ref not in self.tables[other]:
                    raise AuditError(f"audit write failed: {column} {ref} is not in {other}")
            row_id = next(self._ids)
            self.tables[table][row_id] = {"id": row_id, **row, "at": datetime.now(UTC)}
            return row_id

    def _update(self, table: str, row_id: int, **values: Any) -> None:
        """Like the PostgreSQL UPDATE ... WHERE id: a missing row changes nothing."""
        with self._lock:
            if row_id in self.tables[table]:
                self.tables[table][row_id].update(values)

    # --- writes ---------------------------------------------------------------------------

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
            "check_runs",
            {
                "task_id": task_id,
                "check": check,
                "target": target,
                "purpose": purpose,
                "params": audit_json(params),
                "status": CheckStatus.RUNNING,
                "cause": audit_json(cause) if cause is not None else None,
            },
        )

    def finish_check_run(
        self,
        run_id: int,
        status: CheckStatus,
        findings: int,
        duration_ms: float,
        error: str | None = None,
    ) -> None:
        self._update(
            "check_runs",
            run_id,
            status=status,
            findings=findings,
            error=audit_text(error),
            duration_ms=duration_ms,
        )

    def rejected_check(
        self, check: str, raw: dict[str, Any], error: str, task_id: str | None
    ) -> int:
        return self._insert(
            "check_runs",
            {
                "task_id": task_id,
                "check": check,
                "target": redact_text(str(raw.get("target", "?")))[:64],
                "purpose": "detect",
                "params": audit_json(raw),
                "status": CheckStatus.REJECTED,
                "error": audit_text(error),
            },
        )

    def add_finding(self, run_id: int, f: Finding, incident_id: str | None) -> int:
        row = {
            "run_id": run_id,
            "check": f.check,
            "target": f.target,
            "subject": f.subject,
            "kind": f.kind,
            "severity": f.severity.value,
            "observed": audit_text(f.observed),
            "threshold": audit_text(f.threshold),
            "summary": audit_text(f.summary),
            "evidence": audit_json(f.evidence),
            "fingerprint": f.fingerprint,
            "incident_id": incident_id,
        }
        return self._insert("findings", row, run_id=("check_runs", run_id))

    def add_decision(
        self,
        *,
        action: str,
        target: str,
        resource: str,
        decision: Decision,
        guard: str = "",
        reason: str = "",
        finding_id: int | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        row = {
            "finding_id": finding_id,
            "task_id": task_id,
            "action": action,
            "target": target,
            "resource": resource,
            "idempotency_key": idempotency_key,
            "decision": decision,
            "guard": guard or None,
            "reason": audit_text(reason),
            "detail": audit_json(detail) if detail is not None else None,
        }
        return self._insert("guard_decisions", row, finding_id=("findings", finding_id))

    def add_action_run(
        self,
        *,
        action: str,
        target: str,
        resource: str | None,
        params: dict[str, Any],
        outcome: Outcome,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        duration_ms: float = 0.0,
        decision_id: int | None = None,
        finding_id: int | None = None,
        task_id: str | None = None,
        verification: Verification | None = None,
    ) -> int:
        row = {
            "decision_id": decision_id,
            "finding_id": finding_id,
            "task_id": task_id,
            "action": action,
            "target": target,
            "resource": resource,
            "params": audit_json(params),
            "outcome": outcome,
            "error": audit_text(error),
            "result": audit_json(result) if result is not None else None,
            "duration_ms": duration_ms,
            "verification": verification,
            "check_run_id": None,
        }
        return self._insert(
            "action_runs",
            row,
            decision_id=("guard_decisions", decision_id),
            finding_id=("findings", finding_id),
        )

    def set_verification(
        self, action_run_id: int, verification: Verification, check_run_id: int | None
    ) -> None:
        self._update(
            "action_runs", action_run_id, verification=verification, check_run_id=check_run_id
        )

    def record_observation(self, check: str, target: str, metric: str, value: float) -> None:
        """A measured value kept for the next run to compare with (e.g. database size)."""
        row = {"check": check, "target": target, "metric": metric, "value": value}
        self._insert("observations", row)

    def finished_run(self, task_id: str) -> dict[str, Any] | None:
        """The newest succeeded or failed action run of a task, or None."""
        found = [
            row
            for row in self.rows("action_runs", task_id=task_id)
            if row["outcome"] in (Outcome.SUCCEEDED, Outcome.FAILED)
        ]
        return found[-1] if found else None

    def last_observation(self, check: str, target: str, metric: str) -> tuple[float, Any] | None:
        """(value, observed_at) of the newest observation, or None."""
        found = self.rows("observations", check=check, target=target, metric=metric)
        return (found[-1]["value"], found[-1]["at"]) if found else None


if TYPE_CHECKING:  # mypy proves both stores satisfy the protocol the runner takes

    def _both_are_trails(pg: AuditStore, memory: MemoryAuditStore) -> list[AuditTrail]:
        return [pg, memory]
