"""What checks and actions receive: settings, a bound logger and their targets' clients."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from remediation import signing
from remediation.clients import redis as redis_clients
from remediation.errors import TriggerError
from remediation.settings import Settings

HEADER_VERSION = 1
HEADER_MAX_AGE_SECONDS = 7 * 86400
"""A trigger header older than this is refused (the idempotency record lives as long)."""
_CLOCK_SKEW_SECONDS = 300
_FINGERPRINT = re.compile(r"^[0-9a-f]{24}$")
_INCIDENT = re.compile(r"^[0-9a-f]{24}-[0-9a-f]{8}$")
_CHECK = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass
class Trigger:
    """Why an action runs: the finding, its incident and how to re-check it."""

    finding_id: int | None
    check: str
    check_params: dict[str, Any]
    fingerprint: str
    incident: str

    def to_header(self, key: bytes, task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The message header: these fields and when they were issued, signed together with
        the task name and its kwargs, so a header copied onto another call is refused."""
        fields = {**self.__dict__, "v": HEADER_VERSION, "issued_at": round(time.time(), 3)}
        signed = {"task": task, "kwargs": kwargs, **fields}
        return {**fields, "sig": signing.sign(key, "trigger", signed)}

    @classmethod
    def from_header(
        cls, value: Any, key: bytes, task: str, kwargs: dict[str, Any]
    ) -> Trigger | None:
        """The trigger a header names; None when there is none (a call by hand).
        TriggerError when it is malformed, expired or its signature does not match."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise TriggerError(f"trigger header is a {type(value).__name__}, not an object")
        expected = {*cls.__dataclass_fields__, "v", "issued_at", "sig"}
        if set(value) != expected:
            missing, extra = sorted(expected - set(value)), sorted(set(value) - expected)
            raise TriggerError(f"trigger header fields: missing {missing}, unexpected {extra}")
        fields = {k: value[k] for k in value if k != "sig"}
        if not signing.valid(
            key, "trigger", {"task": task, "kwargs": kwargs, **fields}, value["sig"]
        ):
            raise TriggerError("trigger header signature does not match (forged or altered)")
        trigger = cls(**{k: value[k] for k in cls.__dataclass_fields__})
        trigger.validate()
        issued = value["issued_at"]
        if value["v"] != HEADER_VERSION or not isinstance(issued, int | float):
            raise TriggerError("trigger header version or issue time is not understood")
        age = time.time() - float(issued)
        if not -_CLOCK_SKEW_SECONDS <= age <= HEADER_MAX_AGE_SECONDS:
            raise TriggerError(f"trigger header issued {age:.0f}s ago: outside its lifetime")
        return trigger

    def validate(self) -> None:
        """TriggerError unless every field has its shape (in-process triggers are not signed)."""
        problems = [
            name
            for name, ok in (
                (
                    "finding_id",
                    self.finding_id is None
                    or (isinstance(self.finding_id, int) and not isinstance(self.finding_id, bool)),
                ),
                ("check", isinstance(self.check, str) and bool(_CHECK.match(self.check))),
                ("check_params", isinstance(self.check_params, dict)),
                (
                    "fingerprint",
                    isinstance(self.fingerprint, str)
                    and bool(_FINGERPRINT.match(self.fingerprint)),
                ),
                (
                    "incident",
                    isinstance(self.incident, str) and bool(_INCIDENT.match(self.incident)),
                ),
            )
            if not ok
        ]
        if problems:
            raise TriggerError(f"trigger fields malformed: {', '.join(problems)}")


@dataclass
class CheckContext:
    """Handed to a check: read-only access to the configured targets.

    ``store`` is the audit store, for checks that compare with their previous run
    (``store.last_observation`` / ``store.record_observation``); None in unit tests."""

    settings: Settings
    log: Any
    store: Any = None

    def postgres_dsn(self, target: str) -> str:
        return self.settings.postgres_dsn(target)

    @property
    def state(self) -> redis.Redis:
        """The guard/state Redis (an action's own state, notification dedupe, published
        state); checks and resolve steps only read it."""
        return redis_clients.state(self.settings)

    def redis(self, target: str) -> redis.Redis:
        return redis_clients.client(self.settings.redis_url(target))


@dataclass
class ActionContext(CheckContext):
    """Handed to an action: the same, plus why it was triggered (None when called by hand)
    and ``facts`` its resolve step found (e.g. the container's full ID).

    ``resumed_since`` is set when this is the same task delivered again because its worker
    died mid-action: the epoch time its claim was first written. An action whose effect is
    not naturally idempotent checks whether the effect already happened since then.
    ``reserve(n)`` takes up to n units of the action's blast radius (shared by all workers)
    before touching that many things; it returns what may be touched.
    ``approved`` is set when the call runs on an approval: the keys of the plan items that
    were approved and are still true (remediation.plans); the action touches nothing else
    (``approves(key)``); ``approved_detail`` holds those items' details as the approver saw
    them (a count there bounds what the action may do: nothing new)."""

    trigger: Trigger | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # what the resolve step found
    notes: list[str] = field(default_factory=list)
    resumed_since: float | None = None
    idempotency_key: str = ""
    reserve_units: Callable[[int], int] | None = None
    approved: frozenset[str] | None = None
    approved_detail: dict[str, dict[str, Any]] = field(default_factory=dict)

    def approves(self, key: str) -> bool:
        """Whether the call may touch the plan item ``key`` (always, without an approval)."""
        return self.approved is None or key in self.approved

    def approved_count(self, key: str, field_name: str, now: int) -> int:
        """``now``, bounded on an approval by the count the approver saw for the item
        ``key`` (its detail ``field_name``): things that appeared since are not approved."""
        seen = self.approved_detail.get(key, {}).get(field_name)
        if self.approved is None or not isinstance(seen, int):
            return now
        return min(now, seen)

    def reserve(self, units: int) -> int:
        if units <= 0:
            return 0
        return units if self.reserve_units is None else self.reserve_units(units)

    def give_back(self, units: int) -> None:
        """Return reserved units that were not used."""
        if units > 0 and self.reserve_units is not None:
            self.reserve_units(-units)


@dataclass(frozen=True)
class Resolved:
    """What an action call resolves to before any guard: its params with every name made
    canonical (the configured target as configured, a container's own name), and the facts
    found on the way (audited with the call, handed to the action as ctx.facts)."""

    params: Any
    facts: dict[str, Any] = field(default_factory=dict)
