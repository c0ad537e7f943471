"""The guard chain: pause, idempotency, lock, cooldown, budget, breaker, dry-run.

Each guard is small and atomic on its own (SET NX, or one Lua call); the chain undoes what
earlier guards took when a later one refuses, so a refusal leaves no trace but its audit
row. Any Redis error becomes GuardUnavailable: the runner never acts without guard state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from remediation.errors import GuardUnavailable
from remediation.guards import keys
from remediation.guards.breaker import Breaker, Permit, text
from remediation.guards.lua import script
from remediation.registry import ActionSpec
from remediation.settings import Settings

HOUR = 3600
IDEMPOTENCY_TTL = 7 * 24 * HOUR


@dataclass
class Admission:
    """The chain's answer for one call, and what it holds until complete()."""

    admitted: bool
    decision: str  # admitted | suppressed | dry_run | duplicate
    guard: str = ""
    reason: str = ""
    lock_token: str | None = None
    budget_member: str | None = None
    permit: Permit | None = None
    idempotency_key: str = ""
    notes: list[str] = field(default_factory=list)


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

    def breaker(self, target: str) -> Breaker:
        return Breaker(self.r, self.breaker_name(target), self.settings.breaker)

    def cooldown_seconds(self) -> int:
        override = self.settings.guards.cooldown_overrides.get(self.spec.name)
        return int(override if override is not None else self.spec.guards.cooldown.total_seconds())

    def budget(self) -> int | None:
        override = self.settings.guards.budget_overrides.get(self.spec.name)
        return override if override is not None else self.spec.guards.max_per_hour

    def dry_run(self) -> bool:
        g = self.settings.guards
        return g.dry_run or self.spec.name in g.dry_run_actions

    def admit(self, target: str, resource: str, idempotency_key: str) -> Admission:
        """Run every guard in order; the first refusal wins and earlier holds are undone."""
        with _redis_errors():
            adm = Admission(True, "admitted", idempotency_key=idempotency_key)
            for guard in (
                self._pause,
                self._idempotency,
                self._lock,
                self._cooldown,
                self._budget,
                self._breaker,
            ):
                refusal = guard(adm, target, resource)
                if refusal:
                    self._undo(adm, target, resource, keep_idempotency=refusal[0] == "idempotency")
                    adm.admitted, adm.decision = False, refusal[2]
                    adm.guard, adm.reason = refusal[0], refusal[1]
                    return adm
            if self.dry_run():
                self._undo(adm, target, resource)
                return Admission(False, "dry_run", "dry_run", "dry-run: would act", None)
            return adm

    def complete(self, adm: Admission, target: str, resource: str, success: bool) -> str:
        """Record the outcome: breaker window, cooldown on success, release the lock.

        Returns the breaker transition ("opened", "closed" or "")."""
        with _redis_errors():
            transition = ""
            if adm.permit is not None:
                transition = self.breaker(target).record(adm.permit, success)
            cooldown = self.cooldown_seconds()
            if success and cooldown > 0:
                self.r.set(keys.cooldown(self.spec.name, resource), "1", ex=cooldown)
            idem = keys.idempotency(adm.idempotency_key)
            if success:
                self.r.set(idem, "done", ex=IDEMPOTENCY_TTL)
            else:  # a failed attempt may be retried; the breaker bounds the retries
                self.r.delete(idem)
            self._release_lock(adm, resource)
            return transition

    def abandon(self, adm: Admission, target: str, resource: str) -> None:
        """Give back everything an admission holds without recording an outcome."""
        if adm.admitted:
            with _redis_errors():
                self._undo(adm, target, resource)

    # --- the guards: each returns None (pass) or (guard, reason, decision) -------------

    def _pause(self, adm: Admission, target: str, resource: str) -> tuple[str, str, str] | None:
        reason = self.r.get(keys.PAUSE)
        if reason is None:
            return None
        return ("pause", f"maintenance pause: {text(reason) or 'no reason given'}", "suppressed")

    def _idempotency(
        self, adm: Admission, target: str, resource: str
    ) -> tuple[str, str, str] | None:
        key = keys.idempotency(adm.idempotency_key)
        if self.r.set(key, "claimed", nx=True, ex=self.settings.guards.lock_ttl_seconds):
            return None
        seen = text(self.r.get(key) or b"")
        return ("idempotency", f"already {seen or 'claimed'} for this incident", "duplicate")

    def _lock(self, adm: Admission, target: str, resource: str) -> tuple[str, str, str] | None:
        if not self.spec.guards.lock:
            return None
        token = uuid.uuid4().hex
        ttl = self.settings.guards.lock_ttl_seconds
        if self.r.set(keys.lock(self.spec.name, resource), token, nx=True, ex=ttl):
            adm.lock_token = token
            return None
        return ("lock", f"{self.spec.name} already running on {resource}", "suppressed")

    def _cooldown(self, adm: Admission, target: str, resource: str) -> tuple[str, str, str] | None:
        left = self.r.ttl(keys.cooldown(self.spec.name, resource))
        if left is None or left < 0:
            return None
        return ("cooldown", f"cooling down for {left}s after the last success", "suppressed")

    def _budget(self, adm: Admission, target: str, resource: str) -> tuple[str, str, str] | None:
        limit = self.budget()
        if limit is None:
            return None
        member = uuid.uuid4().hex
        taken, used = script(self.r, "budget_take")(
            keys=[keys.budget(self.spec.name)], args=[limit, HOUR, member]
        )
        if taken:
            adm.budget_member = member
            return None
        return ("budget", f"hourly budget spent ({used}/{limit})", "suppressed")

    def _breaker(self, adm: Admission, target: str, resource: str) -> tuple[str, str, str] | None:
        if not self.spec.guards.breaker:
            return None
        permit = self.breaker(target).acquire()
        if permit.allowed:
            adm.permit = permit
            return None
        return ("breaker", f"circuit {self.breaker_name(target)} is {permit.state}", "suppressed")

    # --- undo ---------------------------------------------------------------------------

    def _release_lock(self, adm: Admission, resource: str) -> None:
        if adm.lock_token:
            script(self.r, "release_lock")(
                keys=[keys.lock(self.spec.name, resource)], args=[adm.lock_token]
            )
            adm.lock_token = None

    def _undo(
        self, adm: Admission, target: str, resource: str, *, keep_idempotency: bool = False
    ) -> None:
        if adm.permit is not None and adm.permit.state == "half_open":
            self.breaker(target).release(adm.permit)
        if adm.budget_member:
            self.r.zrem(keys.budget(self.spec.name), adm.budget_member)
        self._release_lock(adm, resource)
        if not keep_idempotency:
            self.r.delete(keys.idempotency(adm.idempotency_key))


def set_pause(client: redis.Redis, reason: str, seconds: int | None) -> None:
    """Pause every action (maintenance); None seconds means until resumed."""
    client.set(keys.PAUSE, reason, ex=seconds)


def clear_pause(client: redis.Redis) -> bool:
    return bool(client.delete(keys.PAUSE))
