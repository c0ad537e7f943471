"""Circuit breaker per action + target, shared by every worker through Redis.

Semantics after resilience4j: in CLOSED, calls are recorded in a sliding time window and
the breaker OPENs when at least ``minimum_calls`` were made and the failed share reaches
``failure_rate_threshold``. OPEN refuses calls for ``wait_seconds``; then HALF_OPEN grants
at most ``half_open_permits`` trial permits, each with a lease so a crashed trial frees its
slot. A failed trial re-opens; enough successful trials close. Admission and recording
are each one Lua call, so eight processes racing for one trial permit get one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis

from remediation.clients.redis import text
from remediation.guards import keys
from remediation.guards.lua import script
from remediation.settings import BreakerSettings


@dataclass(frozen=True)
class Permit:
    allowed: bool
    state: str
    detail: str
    call_id: str


class Breaker:
    """One named breaker ("<action>:<target>")."""

    def __init__(self, client: redis.Redis, name: str, config: BreakerSettings) -> None:
        self.client = client
        self.name = name
        self.config = config

    def acquire(self) -> Permit:
        """Ask to make a call. In HALF_OPEN this takes one of the bounded trial permits."""
        call_id = uuid.uuid4().hex
        decision, state, detail = _decode(
            script(self.client, "breaker_acquire")(
                keys=[keys.breaker(self.name), keys.breaker_permits(self.name), keys.BREAKER_INDEX],
                args=[
                    self.name,
                    self.config.half_open_permits,
                    self.config.permit_lease_seconds,
                    call_id,
                ],
            )
        )
        return Permit(decision == "allow", state, detail, call_id)

    def record(self, permit: Permit, success: bool) -> str:
        """Record the call's outcome; returns "opened", "closed" or "" (no transition)."""
        _, transition = _decode(
            script(self.client, "breaker_record")(
                keys=[
                    keys.breaker(self.name),
                    keys.breaker_calls(self.name),
                    keys.breaker_failures(self.name),
                    keys.breaker_permits(self.name),
                ],
                args=[
                    "success" if success else "failure",
                    permit.call_id,
                    self.config.window_seconds,
                    self.config.minimum_calls,
                    self.config.failure_rate_threshold,
                    self.config.wait_seconds,
                    self.config.half_open_permits,
                ],
            )
        )
        return str(transition)

    def release(self, permit: Permit) -> None:
        """Give a half-open trial permit back unused (another guard refused the call)."""
        self.client.zrem(keys.breaker_permits(self.name), permit.call_id)


def _decode(values: list[Any]) -> list[str]:
    return [text(v) for v in values]


def snapshot(client: redis.Redis) -> list[dict[str, Any]]:
    """Every known breaker with its state, for `remediation breakers` and `status`."""
    rows = []
    for raw in sorted(client.smembers(keys.BREAKER_INDEX)):
        name = text(raw)
        state = {text(k): text(v) for k, v in client.hgetall(keys.breaker(name)).items()}
        rows.append(
            {
                "name": name,
                "state": state.get("state", "closed"),
                "calls_in_window": client.zcard(keys.breaker_calls(name)),
                "failures_in_window": client.zcard(keys.breaker_failures(name)),
                "open_until": float(state["open_until"]) if "open_until" in state else None,
                "times_opened": int(state.get("times_opened", 0)),
            }
        )
    return rows


def reset(client: redis.Redis, name: str) -> bool:
    """Close a breaker by hand and forget its window. Returns False for an unknown name."""
    if not client.sismember(keys.BREAKER_INDEX, name):
        return False
    client.delete(
        keys.breaker(name),
        keys.breaker_calls(name),
        keys.breaker_failures(name),
        keys.breaker_permits(name),
    )
    return True
