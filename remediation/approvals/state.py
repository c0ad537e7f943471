"""Approvals as kept in the state Redis: one hash each, and the Lua that moves them.

Every change of state is one Lua call, so two approvers racing (or an approver racing the
expiry) give one decision: the first transition wins, the second is told who decided.
The same holds for running: the approved call's task claims the approval once.

States: pending -> approved -> running -> done; pending -> denied | expired | withdrawn.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from remediation.guards import keys
from remediation.guards.lua import script

PACKAGE = "remediation.approvals"
KEPT = 1000
"""Approvals listed as recent (the audit keeps every decision for good)."""
KEEP_AFTER_SECONDS = 7 * 86400
"""How long an approval's record outlives its expiry (for `remediation approvals --all`)."""
_ID_CHARS = frozenset("0123456789abcdef")
PENDING, APPROVED, RUNNING, DONE = "pending", "approved", "running", "done"
DENIED, EXPIRED, WITHDRAWN = "denied", "expired", "withdrawn"
DECIDED = (DENIED, EXPIRED)
"""States in which the same call is not asked for again (same incident): a human said no."""


def valid_id(value: Any) -> bool:
    """An approval id: 16 lower-case hex characters."""
    return isinstance(value, str) and len(value) == 16 and set(value) <= _ID_CHARS


@dataclass
class Approval:
    """One approval: the call (canonical), its plan, and what became of it."""

    id: str
    state: str
    action: str
    target: str
    resource: str
    params: dict[str, Any]
    plan: dict[str, Any]
    idempotency_key: str
    requested_at: float
    expires_at: float
    trigger: dict[str, Any] | None = None
    decided_by: str = ""
    decided_at: float | None = None
    reason: str = ""
    run_task: str = ""
    outcome: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def incident(self) -> str | None:
        return self.trigger.get("incident") if self.trigger else None

    @property
    def finding_id(self) -> int | None:
        return self.trigger.get("finding_id") if self.trigger else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "action": self.action,
            "target": self.target,
            "resource": self.resource,
            "params": self.params,
            "plan": self.plan,
            "incident": self.incident,
            "finding_id": self.finding_id,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
            "decided_by": self.decided_by or None,
            "decided_at": self.decided_at,
            "reason": self.reason or None,
            "run_task": self.run_task or None,
            "outcome": self.outcome or None,
        }

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> Approval:
        h = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        return cls(
            id=h["id"],
            state=h["state"],
            action=h["action"],
            target=h["target"],
            resource=h["resource"],
            params=json.loads(h["params"]),
            plan=json.loads(h["plan"]),
            idempotency_key=h["idempotency_key"],
            requested_at=float(h["requested_at"]),
            expires_at=float(h["expires_at"]),
            trigger=json.loads(h["trigger"]) if h.get("trigger") else None,
            decided_by=h.get("decided_by", ""),
            decided_at=float(h["decided_at"]) if h.get("decided_at") else None,
            reason=h.get("reason", ""),
            run_task=h.get("run_task", ""),
            outcome=h.get("outcome", ""),
        )


@dataclass
class Asked:
    """What asking for an approval gave: the approval and whether it is new."""

    approval: Approval
    new: bool


def ask(
    r: redis.Redis,
    *,
    action: str,
    target: str,
    resource: str,
    params: dict[str, Any],
    plan: dict[str, Any],
    idempotency_key: str,
    trigger: dict[str, Any] | None,
    fingerprint: str | None,
    ttl_seconds: int,
) -> Asked:
    """Ask for approval of a call, once per call (its idempotency key): the existing one
    when it is still pending, approved, running, denied or expired."""
    now = time.time()
    new_id = secrets.token_hex(8)
    fields = {
        "id": new_id,
        "state": PENDING,
        "action": action,
        "target": target,
        "resource": resource,
        "params": json.dumps(params, sort_keys=True),
        "plan": json.dumps(plan, sort_keys=True),
        "idempotency_key": idempotency_key,
        "trigger": json.dumps(trigger, sort_keys=True) if trigger else "",
        "requested_at": repr(now),
        "expires_at": repr(now + ttl_seconds),
    }
    flat = [x for pair in fields.items() for x in pair]
    keep = ttl_seconds + KEEP_AFTER_SECONDS
    got_id, state = script(r, "request", PACKAGE)(
        keys=[
            keys.approval_call(idempotency_key),
            keys.approval(new_id),
            keys.APPROVALS_PENDING,
            keys.APPROVALS_RECENT,
            keys.approvals_of(fingerprint or "-"),
        ],
        args=[new_id, repr(now + ttl_seconds), keep, repr(now), KEPT, keys.approval(""), *flat],
    )
    approval = get(r, got_id.decode())
    if approval is None:  # the existing one's record is gone between the two calls
        raise RuntimeError("approval record vanished")
    return Asked(approval, state == b"new")


def get(r: redis.Redis, approval_id: str) -> Approval | None:
    if not valid_id(approval_id):
        return None
    raw = r.hgetall(keys.approval(approval_id))
    return Approval.from_hash(raw) if raw else None  # type: ignore[arg-type]


def _many(r: redis.Redis, ids: list[bytes]) -> list[Approval]:
    pipe = r.pipeline(transaction=False)
    for i in ids:
        pipe.hgetall(keys.approval(i.decode()))
    return [Approval.from_hash(raw) for raw in pipe.execute() if raw]


def pending(r: redis.Redis, limit: int = 500) -> list[Approval]:
    """Pending approvals, the soonest to expire first."""
    return _many(r, r.zrange(keys.APPROVALS_PENDING, 0, limit - 1))  # type: ignore[arg-type]


def recent(r: redis.Redis, limit: int = 100) -> list[Approval]:
    """Approvals in any state, the newest first."""
    return _many(r, r.zrevrange(keys.APPROVALS_RECENT, 0, limit - 1))  # type: ignore[arg-type]


def due(r: redis.Redis, now: float, limit: int = 100) -> list[str]:
    """Ids of pending approvals past their expiry."""
    ids = r.zrangebyscore(keys.APPROVALS_PENDING, "-inf", now, start=0, num=limit)
    return [i.decode() for i in ids]  # type: ignore[union-attr]


@dataclass
class Moved:
    """What a transition gave: result (ok, expired, already, missing, not_due), the state
    the approval is in now and who decided it."""

    result: str
    state: str
    by: str


def transition(r: redis.Redis, approval_id: str, to: str, by: str, reason: str, mode: str) -> Moved:
    """pending -> ``to`` in one Lua call (mode: decide, expire or withdraw)."""
    if not valid_id(approval_id):
        return Moved("missing", "", "")
    result, state, who = script(r, "transition", PACKAGE)(
        keys=[keys.approval(approval_id), keys.APPROVALS_PENDING],
        args=[to, by, reason, repr(time.time()), mode],
    )
    return Moved(result.decode(), state.decode(), who.decode("utf-8", "replace"))


def claim(r: redis.Redis, approval_id: str, task_id: str) -> tuple[bool, str]:
    """(True, "") for the first task to run the approved call (and its redelivery);
    (False, why) otherwise."""
    result, what = script(r, "claim", PACKAGE)(keys=[keys.approval(approval_id)], args=[task_id])
    if result == b"ok":
        return True, ""
    what_text = what.decode("utf-8", "replace")
    if result == b"taken":
        return False, f"approval {approval_id} already runs as task {what_text}"
    return False, f"approval {approval_id} is {what_text}, not approved"


def finish(r: redis.Redis, approval_id: str, outcome: str) -> None:
    """The approved call ran (or was declined at run time): record its outcome."""
    r.hset(keys.approval(approval_id), mapping={"state": DONE, "outcome": outcome})


def of_condition(r: redis.Redis, fingerprint: str) -> list[str]:
    return sorted(i.decode() for i in r.smembers(keys.approvals_of(fingerprint)))  # type: ignore[union-attr]
