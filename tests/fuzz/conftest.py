"""One real Runner (real Redis guard state, real audit PostgreSQL) for the fuzz tests.

Global dry-run is on: the fuzz never needs an action to act, so nothing configured here
points anywhere real, and a kwarg that slipped through would still only be audited.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from remediation.context import Trigger
from remediation.runner import Runner
from remediation.settings import Settings

# Targets the strategies may name: configured, but pointing at closed ports.
CONFIGURED = ["app", "cache"]
FUZZ_ENV = {
    "REMEDIATION_GUARDS__DRY_RUN": "true",
    "REMEDIATION_POSTGRES_TARGETS__APP": "postgresql://fuzz:pw@127.0.0.1:1/none",
    "REMEDIATION_REDIS_TARGETS__CACHE": "redis://127.0.0.1:1/0",
}
# (action, form) -> outcome counts, printed at the end of the session
RESULTS: dict[tuple[str, str], Counter[str]] = {}


class Fuzz:
    """The runner under test, the dispatcher it talks to, and what it left behind."""

    def __init__(self, settings: Settings, state: redis.Redis) -> None:
        self.state = state
        self.dispatched: list[tuple[str, dict[str, Any], Trigger | None]] = []
        self.runner = Runner(settings, self.dispatch)

    def dispatch(self, task: str, kwargs: dict[str, Any], trigger: Trigger | None) -> None:
        self.dispatched.append((task, kwargs, trigger))

    @staticmethod
    def task_id(action: str) -> str:
        return f"fuzz-{action}-{uuid.uuid4().hex}"

    def keys(self) -> set[bytes]:
        return set(self.state.scan_iter(count=1000))

    def action_rows(self, task_id: str) -> list[dict[str, Any]]:
        return self.runner.store.query(
            "SELECT id, decision_id, target, outcome, params::text AS params, error,"
            " result::text AS result FROM action_runs WHERE task_id = %s ORDER BY id",
            (task_id,),
        )

    def decision_rows(self, task_id: str) -> list[dict[str, Any]]:
        return self.runner.store.query(
            "SELECT id, decision, guard, reason, resource, idempotency_key"
            " FROM guard_decisions WHERE task_id = %s ORDER BY id",
            (task_id,),
        )


@pytest.fixture
def fuzz(settings_env: Any, r: redis.Redis) -> Iterator[Fuzz]:
    """A Runner on the test Redis (emptied first) and audit database, dry-run on."""
    settings = settings_env(**FUZZ_ENV)
    assert settings.guards.dry_run
    yield Fuzz(settings, r)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write("fuzz cases per action (form: outcome counts)")
    for (action, form), counts in sorted(RESULTS.items()):
        detail = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        write(f"  {action:30} {form:8} {sum(counts.values()):5}  {detail}")
