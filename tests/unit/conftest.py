"""The unit tier: the runner, playbook and guards in-process, with no server at all.

The state Redis is fakeredis (with Lua, so the guard scripts run as they do on a server),
served through remediation.clients.redis.use(); the audit store is MemoryAuditStore. Every
REMEDIATION_* variable is replaced by addresses nothing answers on, and a test that opens an
IP connection fails: nothing here may need PostgreSQL, Redis or RabbitMQ.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from remediation import playbook, registry
from remediation.audit.memory import MemoryAuditStore
from remediation.clients import redis as redis_clients
from remediation.runner import Runner
from remediation.settings import Settings, get_settings
from tests.unit.doubles import Probe, Recorder

STATE_URL = "redis://unit-state.invalid:6379/0"
UNIT_ENV = {
    "REMEDIATION_STATE_REDIS_URL": STATE_URL,
    "REMEDIATION_BROKER_URL": "redis://unit-broker.invalid:6379/1",
    "REMEDIATION_RESULT_BACKEND": "redis://unit-broker.invalid:6379/2",
    "REMEDIATION_AUDIT_DSN": "postgresql://unit@unit-audit.invalid:5432/none",
    "REMEDIATION_SIGNING_KEY": "unit-signing-key-" + "0123456789abcdef" * 2,
    "REMEDIATION_VERIFY__DELAY_SECONDS": "0",
    "REMEDIATION_VERIFY__ATTEMPTS": "2",
}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any IP connection fails the test: the unit tier reaches no server."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"the unit tier opened a connection to {address!r}")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def state() -> fakeredis.FakeRedis:
    """The state Redis: a fresh in-memory server for each test."""
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture(autouse=True)
def unit_env(
    monkeypatch: pytest.MonkeyPatch, state: fakeredis.FakeRedis
) -> Iterator[Callable[..., Settings]]:
    """get_settings() with no service configured and the state Redis in memory; returns a
    function that adds REMEDIATION_* variables and gives the settings again."""
    for name in list(os.environ):
        if name.startswith("REMEDIATION_"):
            monkeypatch.delenv(name)

    def apply(**extra: str) -> Settings:
        for key, value in {**UNIT_ENV, **extra}.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        redis_clients.reset()
        redis_clients.use(STATE_URL, state)
        return get_settings()

    apply()
    yield apply
    get_settings.cache_clear()
    redis_clients.reset()


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Probe:
    """The scripted check unit_probe and action poke_thing, registered for this test only,
    with the playbook rule unit_thing_stuck -> poke_thing."""
    registry.load_all()
    monkeypatch.setattr(registry, "CHECKS", dict(registry.CHECKS))
    monkeypatch.setattr(registry, "ACTIONS", dict(registry.ACTIONS))
    made = Probe()
    rule = made.register()
    monkeypatch.setattr(playbook, "RULES", [*playbook.RULES, rule])
    return made


@pytest.fixture
def store() -> MemoryAuditStore:
    return MemoryAuditStore()


@pytest.fixture
def sent() -> Recorder:
    return Recorder()


@pytest.fixture
def runner(
    unit_env: Callable[..., Settings], sent: Recorder, store: MemoryAuditStore
) -> Callable[..., Runner]:
    """A function: settings variables -> a Runner on the in-memory doubles whose dispatcher
    records (and runs poke_thing in-process: ``sent.inline``)."""

    def make(**extra: str) -> Runner:
        made = Runner(unit_env(**extra), sent, store=store)
        sent.runner = made
        return made

    return make
