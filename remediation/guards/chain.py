"""The guard chain: pause, idempotency, lock, cooldown, budget, breaker, dry-run.

Admission is one Lua call (admit.lua) that reads every guard first and writes only when
all pass, so a refusal leaves nothing behind and no two workers can both pass. Completion
is one Lua call too (complete.lua). Any Redis error becomes GuardUnavailable: the runner
never acts without guard state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from remediation.errors import GuardUnavailable
from remediation.guards import keys
from remediation.guards.breaker import text
from remediation.guards.lua import script
from remediation.registry import ActionSpec
from remediation.settings import Settings

HOUR = 3600
IDEMPOTENCY_TTL = 7 * 24 * HOUR
_REASONS = {
    "pause": "maintenance pause: {}",
    "idempotency": "already {} for this incident",
    "lock": "{action} already running on {resource}",
    "cooldown": "cooling down for {}s after the last success",
    "budget": "hourly budget spent ({})",
    "breaker": "circuit {breaker} is {}",
    "dry_run": "dry-run: would act",
}


@dataclass
class Admission:
    """The chain's answer for one call, and what it holds until complete()."""

    admitted: bool
    decision: str  # admitted | suppressed | dry_run | duplicate
    guard: str = ""
    reason: str = ""
    lock_token: str = ""
    budget_member: str = ""
    call_id: str = ""
    idempotency_key: str = ""
    breaker_state: str = ""


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise GuardUnavailable(f"guard state unavailable: {type(exc).__name__}: {exc}") from exc


class GuardChain:
    """Admit or refuse one action call on one resource; complete it afterwards."""

    def __init__(self, client: redis.Redis, settings: Settings, spec: ActionSpec) -> None:
        self.r = client
        self.settings = settings
        self.spec = spec

    def breaker_name(self, target: str) -> str:
        return f"{self.spec.name}:{target}"

    def cooldown_seconds(self) -> int:
        override = self.settings.guards.cooldown_overrides.get(self.spec.name)
        return int(override if override is not None else self.spec.guards.cooldown.total_seconds())

    def budget(self) -> int | None:
        override = self.settings.guards.budget_overrides.get(self.spec.name)
        return override if override is not None else self.spec.guards.max_per_hour

    def hold_seconds(self) -> int:
        """How long the lock and the idempotency claim live: past the action's hard limit,
        so a long action (a backup) is never started twice while it still runs."""
        limit = (
            self.spec.timeout.total_seconds()
            if self.spec.timeout
            else (self.settings.celery.time_limit)
        )
        return max(self.settings.guards.lock_ttl_seconds, int(limit) + 120)

    def dry_run(self) -> bool:
        g = self.settings.guards
        return g.dry_run or self.spec.name in g.dry_run_actions

    def admit(self, target: str, resource: str, idempotency_key: str) -> Admission:
        """Every guard in order, atomically; the first refusal wins."""
        g, b = self.spec.guards, self.settings.breaker
        budget = self.budget()
        breaker = self.breaker_name(target) if g.breaker else ""
        adm = Admission(
            False, "", lock_token=uuid.uuid4().hex if g.lock else "",
            budget_member=uuid.uuid4().hex if budget is not None else "",
            call_id=uuid.uuid4().hex, idempotency_key=idempotency_key,
        )  # fmt: skip
        with _redis_errors():
            decision, guard, detail, state = (
                text(v)
                for v in script(self.r, "admit")(
                    keys=[
                        keys.PAUSE, keys.idempotency(idempotency_key),
                        keys.lock(self.spec.name, resource),
                        keys.cooldown(self.spec.name, resource), keys.budget(self.spec.name),
                        keys.breaker(breaker), keys.breaker_permits(breaker), keys.BREAKER_INDEX,
                    ],
                    args=[
                        self.hold_seconds(), adm.lock_token, self.hold_seconds(),
                        "" if budget is None else budget, adm.budget_member, breaker,
                        b.half_open_permits, b.permit_lease_seconds, adm.call_id,
                        "1" if self.dry_run() else "0",
                    ],
                )
            )  # fmt: skip
        adm.admitted, adm.decision, adm.guard, adm.breaker_state = (
            decision == "admitted", decision, guard, state
        )  # fmt: skip
        if guard:
            adm.reason = _REASONS[guard].format(
                detail or "claimed", action=self.spec.name, resource=resource, breaker=breaker
            )
        return adm

    def complete(self, adm: Admission, target: str, resource: str, success: bool) -> str:
        """Record the outcome: breaker window, cooldown on success, release the lock.

        Returns the breaker transition ("opened", "closed" or "")."""
        b = self.settings.breaker
        breaker = self.breaker_name(target)
        with _redis_errors():
            return text(
                script(self.r, "complete")(
                    keys=[
                        keys.breaker(breaker), keys.breaker_calls(breaker),
                        keys.breaker_failures(breaker), keys.breaker_permits(breaker),
                        keys.cooldown(self.spec.name, resource),
                        keys.idempotency(adm.idempotency_key), keys.lock(self.spec.name, resource),
                    ],
                    args=[
                        "success" if success else "failure", adm.call_id, b.window_seconds,
                        b.minimum_calls, b.failure_rate_threshold, b.wait_seconds,
                        b.half_open_permits, "1" if self.spec.guards.breaker else "0",
                        self.cooldown_seconds() if success else 0, IDEMPOTENCY_TTL,
                        adm.lock_token,
                    ],
                )
            )  # fmt: skip

    def abandon(self, adm: Admission, target: str, resource: str) -> None:
        """Give back everything an admission holds without recording an outcome."""
        if not adm.admitted:
            return
        breaker = self.breaker_name(target)
        with _redis_errors():
            script(self.r, "abandon")(
                keys=[
                    keys.idempotency(adm.idempotency_key), keys.lock(self.spec.name, resource),
                    keys.budget(self.spec.name), keys.breaker_permits(breaker),
                ],
                args=[adm.lock_token, adm.budget_member, adm.call_id],
            )  # fmt: skip


def set_pause(client: redis.Redis, reason: str, seconds: int | None) -> None:
    """Pause every action (maintenance); None seconds means until resumed."""
    client.set(keys.PAUSE, reason, ex=seconds)


def clear_pause(client: redis.Redis) -> bool:
    return bool(client.delete(keys.PAUSE))
