"""What checks and actions receive: settings, a bound logger and their targets' clients."""

from __future__ import annotations

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
    """Handed to an action: the same, plus why it was triggered (None when called by hand)."""

    trigger: Trigger | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> redis.Redis:
        """The guard/state Redis (notification dedupe, published state)."""
        return redis_clients.client(self.settings.state_redis_url.get_secret_value())
