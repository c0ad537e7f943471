"""Approvals with a plan (issue 14): a risky call waits for a human who sees what it will do.

The runner asks (remediation.runner: a call whose action and target need approval, per
REMEDIATION_APPROVALS__REQUIRE, is admitted to ``pending_approval`` with its plan, before
any guard: waiting costs the guards nothing). A human decides here, by CLI (`remediation
approvals`, `approve ID`, `deny ID --reason`), by HTTP (POST /approvals/{id}/approve|deny),
by a signed, expiring link in the notification, or in the web console; every path calls
``Approvals.decide``. A pending approval expires after REMEDIATION_APPROVALS__TTL_SECONDS
(= denied; the worker's beat expires them, audited) and is withdrawn when the alert it
answers resolves. An approved call is sent to the worker with a signed approval header;
the runner claims the approval once (a second approver, or a redelivered message, runs
nothing more), the guards still apply, and the action re-computes its plan and acts only on
what was approved and is still true.

Every decision is a guard decision row (guard "approval") with the approval id, who
decided, why and the plan in its ``detail``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from remediation import signing
from remediation.approvals import state
from remediation.approvals.state import Approval
from remediation.audit.protocol import AuditTrail
from remediation.clients import redis as redis_clients
from remediation.context import Trigger
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.metrics_scrape import DECISION_BUCKETS
from remediation.outcomes import Decision
from remediation.redact import bounded_text, redact_text
from remediation.registry import ACTION_PREFIX
from remediation.settings import Settings

APPROVAL_HEADER = "remediation_approval"
"""The message header of an approved call: the approval id, signed with the task name."""
REASON_MAX = 500
BY_MAX = 200
log = get_logger("remediation.approvals")

__all__ = [
    "APPROVAL_HEADER",
    "Approval",
    "Approvals",
    "Decided",
    "SendApproved",
    "header",
    "verify_header",
]


class SendApproved(Protocol):
    """Sends an approved call: dispatch(task, kwargs, trigger, approval=id)."""

    def __call__(
        self,
        task_name: str,
        kwargs: dict[str, Any],
        trigger: Trigger | None,
        approval: str | None = None,
    ) -> None: ...


@dataclass
class Decided:
    """What a decision gave: ``result`` is approved, denied, expired (it was due), already
    (decided before: ``approval.state`` and ``approval.decided_by`` say how) or missing."""

    result: str
    approval: Approval | None
    message: str

    @property
    def ok(self) -> bool:
        return self.result in ("approved", "denied")

    @property
    def status(self) -> int:
        """How the HTTP faces (API, links, console) answer it: 200 decided now, 404 no such
        approval, 409 decided already or expired."""
        if self.ok:
            return 200
        return 404 if self.result == "missing" or self.approval is None else 409


def header(key: bytes, approval_id: str, task_name: str) -> dict[str, str]:
    """The approval header of an approved call's message."""
    payload = {"id": approval_id, "task": task_name}
    return {"id": approval_id, "sig": signing.sign(key, "approval", payload)}


def verify_header(key: bytes, value: Any, task_name: str) -> str:
    """The approval id a header names; ValueError when it is malformed or forged."""
    if not isinstance(value, dict) or set(value) != {"id", "sig"}:
        raise ValueError("approval header is not {id, sig}")
    if not state.valid_id(value["id"]):
        raise ValueError("approval header: not an approval id")
    payload = {"id": value["id"], "task": task_name}
    if not signing.valid(key, "approval", payload, value["sig"]):
        raise ValueError("approval header signature does not match (forged or altered)")
    return str(value["id"])


def record_event(r: redis.Redis, event: str, waited: float | None = None) -> None:
    """Count an approval event (and the time to a decision) where every process sees it:
    the counts live in the state Redis and are read at scrape time (ApprovalCollector)."""
    try:
        pipe = r.pipeline(transaction=False)
        pipe.hincrby(keys.APPROVALS_STATS, f"event:{event}", 1)
        if waited is not None:
            for bound in DECISION_BUCKETS:
                if waited <= bound:
                    pipe.hincrby(keys.APPROVALS_STATS, f"le:{bound}", 1)
            pipe.hincrby(keys.APPROVALS_STATS, "count", 1)
            pipe.hincrbyfloat(keys.APPROVALS_STATS, "sum", max(0.0, waited))
        pipe.execute()
    except Exception as exc:  # metrics never break what they describe
        log.warning("approval metrics not recorded", error=str(exc))


class Approvals:
    """Decide, expire and withdraw approvals, audited; send approved calls to the worker."""

    def __init__(
        self, settings: Settings, store: AuditTrail, send: SendApproved | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.send = send

    @property
    def state(self) -> redis.Redis:
        return redis_clients.state(self.settings)

    # --- reading ----------------------------------------------------------------------------

    def get(self, approval_id: str) -> Approval | None:
        return state.get(self.state, approval_id)

    def pending(self) -> list[Approval]:
        self.expire_due()
        return state.pending(self.state)

    def recent(self, limit: int = 100) -> list[Approval]:
        self.expire_due()
        return state.recent(self.state, limit)

    # --- deciding ---------------------------------------------------------------------------

    def decide(self, approval_id: str, approve: bool, by: str, reason: str = "") -> Decided:
        """Approve or deny a pending approval; one decision however many decide at once.
        Approved: audited, then the call is sent to the worker (which re-computes the plan
        and acts only on what is still true)."""
        by = bounded_text(redact_text(by.strip()), BY_MAX) or "unknown"
        reason = bounded_text(redact_text(reason.strip()), REASON_MAX)
        to = state.APPROVED if approve else state.DENIED
        moved = state.transition(self.state, approval_id, to, by, reason, "decide")
        approval = state.get(self.state, approval_id)
        if moved.result == "missing" or approval is None:
            return Decided("missing", None, f"no approval {approval_id[:40]!r}")
        if moved.result == "already":
            return Decided(
                "already",
                approval,
                f"approval {approval_id} was {moved.state} already (by {moved.by or '-'})",
            )
        if moved.result == "expired":
            self._audit(approval, Decision.EXPIRED, "expiry", "not decided in time")
            return Decided("expired", approval, f"approval {approval_id} had expired")
        self._audit(approval, Decision(to), by, reason)
        verb = "approved: the call is sent to the worker" if approve else "denied"
        if approve:
            try:
                self._send(approval)
            except Exception as exc:  # the decision stands (audited); say the send failed
                log.error("could not send an approved call", approval=approval_id, error=str(exc))
                verb = f"approved, but sending the call to the worker failed ({type(exc).__name__})"
        return Decided(to, approval, f"approval {approval_id} {verb}")

    def expire_due(self) -> int:
        """Expire every pending approval past its time (= denied, audited); how many."""
        try:
            ids = state.due(self.state, time.time())
        except Exception as exc:
            log.warning("could not read approvals to expire", error=str(exc))
            return 0
        return self._close(ids, Decision.EXPIRED, "expiry", "not decided in time", "expire")

    def withdraw(self, fingerprint: str, reason: str) -> int:
        """Withdraw the pending approvals asked for on a condition that went away."""
        ids = state.of_condition(self.state, fingerprint)
        return self._close(ids, Decision.WITHDRAWN, "intake", reason, "withdraw")

    def _close(self, ids: list[str], to: Decision, by: str, reason: str, mode: str) -> int:
        """Move each pending approval of ``ids`` to ``to`` (audited); how many moved."""
        n = 0
        for approval_id in ids:
            moved = state.transition(self.state, approval_id, str(to), by, reason, mode)
            approval = state.get(self.state, approval_id)
            if moved.result == "ok" and approval is not None:
                self._audit(approval, to, by, reason)
                n += 1
        return n

    def _audit(self, approval: Approval, decision: Decision, by: str, reason: str) -> None:
        """The decision row (the audit writes spool while PostgreSQL is away), its metrics."""
        waited = time.time() - approval.requested_at
        text = f"approval {approval.id} {decision} by {by}" + (f": {reason}" if reason else "")
        try:
            self.store.add_decision(
                action=approval.action,
                target=approval.target,
                resource=approval.resource,
                decision=decision,
                guard="approval",
                reason=text,
                finding_id=approval.finding_id,
                idempotency_key=approval.idempotency_key,
                detail={
                    "approval": approval.id,
                    "by": by,
                    "reason": reason,
                    "plan": approval.plan,
                    "waited_seconds": round(waited, 3),
                },
            )
        except Exception as exc:
            log.error("could not audit an approval decision", approval=approval.id, error=str(exc))
        record_event(self.state, str(decision), waited)
        log.info("approval decided", approval=approval.id, decision=str(decision), by=by)

    def _send(self, approval: Approval) -> None:
        if self.send is None:
            raise RuntimeError("this process cannot send approved calls (no dispatcher)")
        trigger = Trigger(**approval.trigger) if approval.trigger else None
        self.send(
            ACTION_PREFIX + approval.action, dict(approval.params), trigger, approval=approval.id
        )
