"""The guard chain: pause, idempotency, flap, lock, cooldown, budget, blast radius, breaker,
dry-run.

Admission is one Lua call (admit.lua) that reads every guard first and writes only when
all pass, so a refusal leaves nothing behind and no two workers can both pass. Completion
is one Lua call too (complete.lua). Any Redis error becomes GuardUnavailable: the runner
never acts without guard state.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from remediation.clients.redis import text
from remediation.errors import GuardUnavailable
from remediation.guards import keys
from remediation.guards.lua import script
from remediation.outcomes import Decision
from remediation.registry import ActionSpec
from remediation.settings import Settings

HOUR = 3600
_HOLDER = socket.gethostname()  # a lock's value names its holder: <token>@<host>:<pid>
IDEMPOTENCY_TTL = 7 * 24 * HOUR
_REASONS = {
    "pause": "maintenance pause: {}",
    "idempotency": "already {} for this incident",
    "lock": "{action} already running on {resource}",
    "cooldown": "cooling down for {}s after the last success",
    "budget": "hourly budget spent ({})",
    "flap": "flap guard: {action} on {resource} suspended ({})",
    "blast": "blast-radius cap reached ({} units in the window)",
    "resume": "redelivered after its worker was lost mid-action (claimed at {})",
    "breaker": "circuit {breaker} is {}",
    "dry_run": "dry-run: would act",
}


@dataclass
class Admission:
    """The chain's answer for one call, and what it holds until complete()."""

    admitted: bool
    decision: Decision  # admitted, suppressed, dry_run or duplicate
    guard: str = ""
    reason: str = ""
    lock_token: str = ""
    budget_member: str = ""
    call_id: str = ""
    idempotency_key: str = ""
    breaker_state: str = ""
    claimed_at: float = 0.0  # when the idempotency claim was first written (server time)
    resumed: bool = False  # the same task again: its previous attempt died mid-action
    flap_escalate: bool = False  # this refusal started a flap suspension: escalate once
    blast_granted: int = 0  # blast-radius units the admitting call reserved (grant call_id)


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise GuardUnavailable(f"guard state unavailable: {type(exc).__name__}: {exc}") from exc


def is_dry_run(settings: Settings, spec: ActionSpec) -> bool:
    """REMEDIATION_GUARDS__DRY_RUN, or the action listed in REMEDIATION_GUARDS__DRY_RUN_ACTIONS."""
    g = settings.guards
    return g.dry_run or spec.name in g.dry_run_actions


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

    def flap_limit(self) -> int | None:
        if not self.spec.guards.flap:
            return None
        g = self.settings.guards
        return g.flap_overrides.get(self.spec.name, g.flap_max_runs)

    def blast_cap(self) -> tuple[int, int] | None:
        cap = self.settings.guards.blast_radius.get(self.spec.name)
        return None if cap is None else (cap.units, cap.window_seconds)

    def reserve(self, units: int, grant_id: str) -> int:
        """Take up to ``units`` of this action's blast radius (all workers share it) as one
        grant. Returns what was granted."""
        cap = self.blast_cap()
        if cap is None:
            return units
        with _redis_errors():
            granted, _ = script(self.r, "blast")(
                keys=[keys.blast(self.spec.name)], args=[cap[0], cap[1], units, grant_id, 0]
            )
        return int(granted)

    def refund(self, grant_id: str, granted: int, units: int) -> None:
        """Give back ``units`` of a grant of ``granted`` units."""
        cap = self.blast_cap()
        if cap is None or units <= 0:
            return
        with _redis_errors():
            script(self.r, "blast")(
                keys=[keys.blast(self.spec.name)],
                args=[cap[0], cap[1], -units, grant_id, granted],
            )

    def dry_run(self) -> bool:
        return is_dry_run(self.settings, self.spec)

    def _admit_keys(self, resource: str, idempotency_key: str, breaker: str) -> list[str]:
        """admit.lua's KEYS, in its order."""
        action = self.spec.name
        return [
            keys.PAUSE,
            keys.idempotency(idempotency_key),
            keys.lock(action, resource),
            keys.cooldown(action, resource),
            keys.budget(action),
            keys.breaker(breaker),
            keys.breaker_permits(breaker),
            keys.BREAKER_INDEX,
            keys.flap(action, resource),
            keys.flap_suspended(action, resource),
            keys.blast(action),
        ]

    def _admit_args(
        self, adm: Admission, breaker: str, task_id: str, upfront: int | None
    ) -> list[Any]:
        """admit.lua's ARGV, in its order."""
        b, gs = self.settings.breaker, self.settings.guards
        budget, flap = self.budget(), self.flap_limit()
        # The cap is checked (and units reserved) at admission only for an action that always
        # needs units (it declared upfront units); one that may act without any (the give-up
        # of restart_container) takes them as it goes (ctx.reserve) and defers when refused.
        blast = self.blast_cap() if upfront is not None else None
        return [
            self.hold_seconds(),
            adm.lock_token,
            self.hold_seconds(),
            "" if budget is None else budget,
            adm.budget_member,
            breaker,
            b.half_open_permits,
            b.permit_lease_seconds,
            adm.call_id,
            "1" if self.dry_run() else "0",
            task_id or uuid.uuid4().hex,
            "" if flap is None else flap,
            gs.flap_window_minutes * 60,
            gs.flap_suspend_minutes * 60,
            "" if blast is None else blast[0],
            blast[1] if blast else 0,
            "" if upfront is None else max(upfront, 0),
        ]

    def admit(
        self,
        target: str,
        resource: str,
        idempotency_key: str,
        task_id: str = "",
        upfront: int | None = None,
    ) -> Admission:
        """Every guard in order, atomically; the first refusal wins."""
        g, budget = self.spec.guards, self.budget()
        breaker = self.breaker_name(target) if g.breaker else ""
        adm = Admission(
            False,
            Decision.SUPPRESSED,
            lock_token=f"{uuid.uuid4().hex}@{_HOLDER}:{os.getpid()}" if g.lock else "",
            budget_member=uuid.uuid4().hex if budget is not None else "",
            call_id=uuid.uuid4().hex,
            idempotency_key=idempotency_key,
        )
        with _redis_errors():
            decision, guard, detail, state, *granted = (
                text(v)
                for v in script(self.r, "admit")(
                    keys=self._admit_keys(resource, idempotency_key, breaker),
                    args=self._admit_args(adm, breaker, task_id, upfront),
                )
            )
        adm.admitted, adm.decision, adm.guard, adm.breaker_state = (
            decision == Decision.ADMITTED,
            Decision(decision),
            guard,
            state,
        )
        if adm.admitted:
            adm.claimed_at, adm.resumed = float(detail), guard == "resume"
            adm.blast_granted = int(granted[0]) if granted else 0
        adm.flap_escalate = guard == "flap" and detail.startswith("new:")
        if guard:
            adm.reason = _REASONS[guard].format(
                detail or "claimed", action=self.spec.name, resource=resource, breaker=breaker
            )
        return adm

    def complete(
        self, adm: Admission, target: str, resource: str, success: bool, refund: int = 0
    ) -> str:
        """Record the outcome: breaker window, cooldown on success, release the lock, give
        back ``refund`` unused units of the admission's blast-radius grant.

        Returns the breaker transition ("opened", "closed" or "")."""
        b = self.settings.breaker
        breaker = self.breaker_name(target)
        with _redis_errors():
            return text(
                script(self.r, "complete")(
                    keys=[
                        keys.breaker(breaker),
                        keys.breaker_calls(breaker),
                        keys.breaker_failures(breaker),
                        keys.breaker_permits(breaker),
                        keys.cooldown(self.spec.name, resource),
                        keys.idempotency(adm.idempotency_key),
                        keys.lock(self.spec.name, resource),
                        keys.blast(self.spec.name),
                    ],
                    args=[
                        "success" if success else "failure",
                        adm.call_id,
                        b.window_seconds,
                        b.minimum_calls,
                        b.failure_rate_threshold,
                        b.wait_seconds,
                        b.half_open_permits,
                        "1" if self.spec.guards.breaker else "0",
                        self.cooldown_seconds() if success else 0,
                        IDEMPOTENCY_TTL,
                        adm.lock_token,
                        adm.blast_granted,
                        min(refund, adm.blast_granted),
                    ],
                )
            )

    def give_up(self, adm: Admission, target: str, resource: str, task_id: str) -> str:
        """A poison task (its worker died on every delivery): free its claim if it still
        holds it and count one failure on the breaker. Its lock is left to expire, so the
        resource rests for the lock's lease. Returns the breaker transition."""
        with _redis_errors():
            claim = self.r.get(keys.idempotency(adm.idempotency_key))
            if claim is not None and text(claim).startswith(f"claimed|{task_id}|"):
                self.r.delete(keys.idempotency(adm.idempotency_key))
        if not self.spec.guards.breaker:
            return ""
        return self.complete(
            Admission(
                True, Decision.ADMITTED, call_id=adm.call_id, idempotency_key=f"poison:{task_id}"
            ),
            target,
            resource,
            success=False,
        )

    def abandon(self, adm: Admission, target: str, resource: str) -> None:
        """Give back everything an admission holds without recording an outcome."""
        if not adm.admitted:
            return
        breaker = self.breaker_name(target)
        with _redis_errors():
            script(self.r, "abandon")(
                keys=[
                    keys.idempotency(adm.idempotency_key),
                    keys.lock(self.spec.name, resource),
                    keys.budget(self.spec.name),
                    keys.breaker_permits(breaker),
                    keys.flap(self.spec.name, resource),
                    keys.blast(self.spec.name),
                ],
                args=[adm.lock_token, adm.budget_member, adm.call_id, adm.blast_granted],
            )


def set_pause(client: redis.Redis, reason: str, seconds: int | None) -> None:
    """Pause every action (maintenance); None seconds means until resumed."""
    client.set(keys.PAUSE, reason, ex=seconds)


def clear_pause(client: redis.Redis) -> bool:
    return bool(client.delete(keys.PAUSE))


@dataclass
class BlastAccount:
    """The blast-radius units one action call may use: first those its admission reserved,
    then more grants on demand; what it gives back is returned when it completes."""

    chain: GuardChain
    pool: int = 0  # reserved by the admission, not yet handed to the action
    unused: int = 0  # handed out and given back by the action
    extra: list[tuple[str, int]] = field(default_factory=list)  # grants after admission

    def take(self, units: int) -> int:
        """Up to ``units`` more (a negative count gives that many back). Returns the grant."""
        if units < 0:
            self.unused += -units
            return 0
        if self.chain.blast_cap() is None:
            return units
        got = min(units, self.pool)
        self.pool -= got
        if got < units:
            grant_id = uuid.uuid4().hex
            more = self.chain.reserve(units - got, grant_id)
            if more:
                self.extra.append((grant_id, more))
            got += more
        return got

    def settle(self, admission_grant: int, everything: bool = False) -> int:
        """Give back what later grants did not use (``everything``: all of them, the action
        declined); return how many units to give back from the admission's grant
        (complete() or abandon() does that in its own call)."""
        back = self.pool + self.unused
        if everything:
            back = admission_grant + sum(granted for _, granted in self.extra)
        from_admission = min(back, admission_grant)
        rest = back - from_admission
        for grant_id, granted in reversed(self.extra):
            if rest <= 0:
                break
            self.chain.refund(grant_id, granted, min(rest, granted))
            rest -= min(rest, granted)
        return from_admission
