"""What checks and actions receive: settings, a bound logger and their targets' clients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from remediation.clients import redis as redis_clients
from remediation.settings import Settings


@dataclass
class Trigger:
    """Why an action runs: the finding, its incident and how to re-check it."""

    finding_id: int | None
    check: str
    check_params: dict[str, Any]
    fingerprint: str
    incident: str

    @property
    def as_header(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @classmethod
    def from_header(cls, value: dict[str, Any] | None) -> Trigger | None:
        if not value:
            return None
        return cls(**{k: value[k] for k in cls.__dataclass_fields__})


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

    def redis(self, target: str) -> redis.Redis:
        return redis_clients.client(self.settings.redis_url(target))


@dataclass
class ActionContext(CheckContext):
    """Handed to an action: the same, plus why it was triggered (None when called by hand).

    ``resumed_since`` is set when this is the same task delivered again because its worker
    died mid-action: the epoch time its claim was first written. An action whose effect is
    not naturally idempotent checks whether the effect already happened since then.
    ``reserve(n)`` takes up to n units of the action's blast radius (shared by all workers)
    before touching that many things; it returns what may be touched."""

    trigger: Trigger | None = None
    notes: list[str] = field(default_factory=list)
    resumed_since: float | None = None
    idempotency_key: str = ""
    reserve_units: Callable[[int], int] | None = None

    def reserve(self, units: int) -> int:
        if units <= 0:
            return 0
        return units if self.reserve_units is None else self.reserve_units(units)

    def give_back(self, units: int) -> None:
        """Return reserved units that were not used."""
        if units > 0 and self.reserve_units is not None:
            self.reserve_units(-units)

    @property
    def state(self) -> redis.Redis:
        """The guard/state Redis (notification dedupe, published state)."""
        return redis_clients.client(self.settings.state_redis_url.get_secret_value())
