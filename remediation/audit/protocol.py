"""What the runner, checks and actions need from an audit store, as a typing.Protocol.

Two stores satisfy it (mypy checks both, in remediation.audit.memory): the PostgreSQL one
(remediation.audit.store.AuditStore, with its spool) and the in-memory one
(remediation.audit.memory.MemoryAuditStore, for the unit tier and dry runs). Reports and
the CLI's history read SQL and take the PostgreSQL store itself.
"""

from __future__ import annotations

from typing import Any, Protocol

from remediation.findings import Finding
from remediation.outcomes import CheckStatus, Decision, Outcome, Verification


class AuditTrail(Protocol):
    """Append-only rows: check run -> finding -> guard decision -> action run -> verification."""

    def start_check_run(
        self,
        check: str,
        target: str,
        params: dict[str, Any],
        purpose: str,
        task_id: str | None,
        cause: dict[str, Any] | None = None,
    ) -> int: ...

    def finish_check_run(
        self,
        run_id: int,
        status: CheckStatus,
        findings: int,
        duration_ms: float,
        error: str | None = None,
    ) -> None: ...

    def rejected_check(
        self, check: str, raw: dict[str, Any], error: str, task_id: str | None
    ) -> int: ...

    def add_finding(self, run_id: int, f: Finding, incident_id: str | None) -> int: ...

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
    ) -> int: ...

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
    ) -> int: ...

    def set_verification(
        self, action_run_id: int, verification: Verification, check_run_id: int | None
    ) -> None: ...

    def finished_run(self, task_id: str) -> dict[str, Any] | None:
        """The newest succeeded or failed action run of a task (id, outcome, result,
        verification), or None (also while unreachable)."""

    def record_observation(self, check: str, target: str, metric: str, value: float) -> None:
        """A measured value kept for the next run to compare with (e.g. database size)."""

    def last_observation(self, check: str, target: str, metric: str) -> tuple[float, Any] | None:
        """(value, observed_at) of the newest observation, or None."""
