"""One object per call: what the runner knows about a check or action call, built once.

An ActionCall holds the canonical params (after the action's resolve step) and derives from
them, in one place, every name the guards, the audit and the notices use: target, resource,
idempotency key, incident. Nothing downstream rebuilds them. Once the guards admit it, an
Admitted carries the call with what its admission holds until it completes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from remediation.approvals.state import Approval
from remediation.context import Trigger
from remediation.findings import Finding
from remediation.guards.chain import Admission, BlastAccount, GuardChain
from remediation.outcomes import UNDECIDED, CheckStatus, Outcome, Verification
from remediation.redact import redact_text, storable
from remediation.registry import ActionSpec

__all__ = ["UNDECIDED", "ActionCall", "ActionOutcome", "Admitted", "CheckOutcome"]


@dataclass
class ActionCall:
    """An action call: its spec, canonical params, where it came from, what resolve found."""

    spec: ActionSpec
    params: Any
    task_id: str | None = None
    trigger: Trigger | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    approval: Approval | None = None  # the approval it runs on (remediation.approving)
    _call: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def target(self) -> str:
        return str(self.params.target)

    @cached_property
    def resource(self) -> str:
        """What locks, cooldowns, breakers' neighbours and idempotency keys are scoped to."""
        return self.spec.resource(self.params)

    @cached_property
    def idempotency_key(self) -> str:
        """One action per resource per incident; a call by hand is its own incident."""
        scope = self.trigger.incident if self.trigger else f"task:{self.task_id or self._call}"
        return f"{self.spec.name}:{self.resource}:{scope}"

    @property
    def incident(self) -> str:
        """The incident notices about this call are deduplicated under."""
        return self.trigger.incident if self.trigger else f"{self.spec.name}:{self.resource}"

    @property
    def flap_incident(self) -> str:
        """Notices that this action flaps on this resource (one per suspension)."""
        return f"flap:{self.spec.name}:{self.resource}"

    @staticmethod
    def breaker_incident(breaker: str) -> str:
        """Notices that the call's breaker opened (the breaker is shared by many calls)."""
        return f"breaker:{breaker}"

    def notice_incident(self, kind: str) -> str:
        """Notices of one kind about this action (refused, unresolved), whatever the call."""
        return f"{kind}:{self.spec.name}"

    @property
    def finding_id(self) -> int | None:
        return self.trigger.finding_id if self.trigger else None

    @cached_property
    def audit(self) -> dict[str, Any]:
        """The identifiers as audited: redacted (a credential URL given as a key)."""
        return {
            "action": self.spec.name,
            "target": redact_text(self.target),
            "resource": redact_text(self.resource),
        }

    @property
    def what(self) -> str:
        return f"{self.spec.name} on {self.audit['resource']}"

    def run_columns(self) -> dict[str, Any]:
        """The columns every action run row of this call shares."""
        return {
            **self.audit,
            "params": self.params.model_dump(mode="json"),
            "finding_id": self.finding_id,
            "task_id": self.task_id,
        }

    def decision(self) -> dict[str, Any]:
        """The columns every guard decision row of this call shares."""
        return {
            **self.audit,
            "finding_id": self.finding_id,
            "task_id": self.task_id,
            "idempotency_key": redact_text(self.idempotency_key),
        }


@dataclass
class Admitted:
    """An admitted call and what its admission holds until the call completes: the chain
    that admitted it, the admission (claim, lock, budget, permit), its blast-radius units,
    its decision row and when the action started."""

    call: ActionCall
    chain: GuardChain
    adm: Admission
    decision_id: int
    blast: BlastAccount
    started: float = 0.0  # time.monotonic() when the action started

    def complete(self, success: bool) -> str:
        """Record the outcome and release the holds; the breaker transition or ""."""
        c = self.call
        refund = self.blast.settle(self.adm.blast_granted)
        return self.chain.complete(self.adm, c.target, c.resource, success, refund)

    def give_back(self) -> None:
        """Everything the admission took, without recording an outcome (the action declined)."""
        self.blast.settle(self.adm.blast_granted, everything=True)
        self.chain.abandon(self.adm, self.call.target, self.call.resource)


@dataclass
class CheckOutcome:
    status: CheckStatus
    check_run_id: int
    findings: list[Finding] = field(default_factory=list)
    finding_ids: list[int] = field(default_factory=list)
    dispatched: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "check_run_id": self.check_run_id,
            "findings": [f.model_dump(mode="json") for f in self.findings],
            "dispatched": self.dispatched,
            "error": self.error,
        }


@dataclass
class ActionOutcome:
    outcome: Outcome
    decision_id: int | None = None
    action_run_id: int | None = None
    reason: str = ""
    verification: Verification | None = None
    result: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def validation_message(exc: ValidationError) -> str:
    """One line per problem, naming the kwarg, without echoing the rejected values (and
    storable: a kwarg's name may hold anything)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "kwargs"
        parts.append(f"{loc}: {err['msg']}")
    return str(storable("; ".join(parts)))
