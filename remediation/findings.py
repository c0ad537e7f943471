"""What a check reports (Finding) and what an action returns (ActionResult)."""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field


class Severity(StrEnum):
    """Runbook escalation bands: Medium -> warning, High -> high, Critical -> critical."""

    INFO = "info"
    WARNING = "warning"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class Finding(BaseModel):
    """One thing a check saw: which target, what state, how far past which threshold."""

    model_config = ConfigDict(frozen=True)

    check: str
    target: str = Field(description="configured target name (postgres/redis target)")
    subject: str = Field("", description="resource inside the target: a table, a list key")
    kind: str = Field(description="<signal>_<state>, the playbook's key")
    severity: Severity
    observed: float | int | str | None = None
    threshold: float | int | str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    summary: str = ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fingerprint(self) -> str:
        """Stable identity of the condition: the same problem has the same fingerprint."""
        raw = "\x1f".join((self.check, self.target, self.subject, self.kind))
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    @property
    def resource(self) -> str:
        """target/subject: what locks, cooldowns and idempotency keys are scoped to."""
        return f"{self.target}/{self.subject}" if self.subject else self.target


class FollowUp(BaseModel):
    """A next step an action hands on: another action, sent right away as its own task
    (its own resolve step and guards) in the same incident as the call that asked for it."""

    model_config = ConfigDict(frozen=True)

    action: str
    params: dict[str, Any] = Field(default_factory=dict)


class ActionResult(BaseModel):
    """What an action did. ``changed`` False means it found nothing to do (idempotent).
    ``follow_up``: actions to send next (a new dump hands itself to verification)."""

    ok: bool = True
    changed: bool = True
    summary: str = ""
    detail: dict[str, Any] = Field(default_factory=dict)
    follow_up: list[FollowUp] = Field(default_factory=list)
