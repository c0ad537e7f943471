"""What an action call would do, computed read-only: its plan (issue 14).

An approval shows the approver a plan and approves exactly its items; dry-run records the
same plan. Each item has a ``key`` naming what it touches so that, once approved, the
action can re-compute its plan and act only on items whose key was approved and is still
there (a session that went away in between is simply not in the new plan; a new one is not
in the approved set). An action declares ``plan=`` on its decorator; one without gets
``generic``: one item, the canonical resource with the canonical params.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from remediation.redact import bounded_text, redact, redact_text

MAX_ITEMS = 200
"""Items a plan lists; more are counted (``more``), never listed: a plan is read by a human."""


class PlanItem(BaseModel):
    """One thing the call would touch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1, max_length=300, description="stable identity of the thing")
    what: str = Field(max_length=1000, description="what would be done to it, for a human")
    detail: dict[str, Any] = Field(default_factory=dict)


class Plan(BaseModel):
    """The exact effect of a call as it would run now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    summary: str = Field(max_length=1000)
    items: list[PlanItem] = Field(default_factory=list, max_length=MAX_ITEMS)
    more: int = Field(0, ge=0, description="items beyond MAX_ITEMS, not listed")

    def keys(self) -> frozenset[str]:
        return frozenset(i.key for i in self.items)

    def only(self, keys: frozenset[str]) -> Plan:
        """This plan restricted to the items whose key is in ``keys``."""
        items = [i for i in self.items if i.key in keys]
        return Plan(summary=self.summary, items=items)


def plan_of(summary: str, items: list[PlanItem]) -> Plan:
    """A plan, its texts redacted and bounded, at most MAX_ITEMS items listed."""
    safe = [
        PlanItem(
            key=bounded_text(i.key, 300),
            what=bounded_text(redact_text(i.what), 1000),
            detail=redact(i.detail),
        )
        for i in items[:MAX_ITEMS]
    ]
    more = max(0, len(items) - MAX_ITEMS)
    return Plan(summary=bounded_text(redact_text(summary), 1000), items=safe, more=more)


def item(key: str, what: str, **detail: Any) -> PlanItem:
    return PlanItem(key=key, what=what, detail=detail)


def generic(action: str, resource: str, params: dict[str, Any]) -> Plan:
    """The plan of an action that declares none: the call itself, one item."""
    shown = {k: v for k, v in params.items() if k != "target"}
    what = f"{action} on {resource}" + (f" with {shown}" if shown else "")
    return plan_of(what, [item(f"resource:{resource}", what, params=shown)])


def compute(spec: Any, ctx: Any, params: Any) -> Plan:
    """The plan of a call: the action's own (``plan=`` on its decorator), else ``generic``."""
    if spec.plan is not None:
        plan = spec.plan(ctx, params)
        if not isinstance(plan, Plan):
            raise TypeError(f"{spec.name}: its plan function returned {type(plan).__name__}")
        return plan
    return generic(spec.name, spec.resource(params), params.model_dump(mode="json"))
