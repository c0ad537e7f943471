"""The guard chain against a real redis-server: each guard refuses, and refusals undo."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

from remediation.errors import GuardUnavailable
from remediation.guards import keys
from remediation.guards.chain import GuardChain, clear_pause, set_pause
from remediation.settings import Settings
from tests.support.runner import spec


def settings(**guards: object) -> Settings:
    return Settings(guards=guards) if guards else Settings()  # type: ignore[arg-type]


def test_admit_then_complete_sets_cooldown(r: redis.Redis) -> None:
    """A success starts the cooldown; the next call on the resource is suppressed."""
    chain = GuardChain(r, settings(), spec(cooldown=timedelta(minutes=5)))
    adm = chain.admit("t", "t/x", "k1")
    assert adm.admitted
    chain.complete(adm, "t", "t/x", success=True)
    again = chain.admit("t", "t/x", "k2")
    assert (again.admitted, again.guard) == (False, "cooldown")
    assert chain.admit("t", "t/other", "k3").admitted  # cooldown is per resource


def test_failure_sets_no_cooldown_and_allows_retry_of_same_key(r: redis.Redis) -> None:
    """A failed attempt starts no cooldown and frees its idempotency key for a retry."""
    chain = GuardChain(r, settings(), spec(cooldown=timedelta(minutes=5)))
    adm = chain.admit("t", "t/x", "k1")
    chain.complete(adm, "t", "t/x", success=False)
    assert chain.admit("t", "t/x", "k1").admitted


def test_lock_refuses_concurrent_call_and_is_released(r: redis.Redis) -> None:
    """While one call holds the resource, another is suppressed by the lock."""
    chain = GuardChain(r, settings(), spec())
    first = chain.admit("t", "t/x", "k1")
    second = chain.admit("t", "t/x", "k2")
    assert (second.admitted, second.guard) == (False, "lock")
    chain.complete(first, "t", "t/x", success=True)
    assert chain.admit("t", "t/x", "k3").admitted


def test_duplicate_idempotency_key_is_refused(r: redis.Redis) -> None:
    """The same incident key after success is a duplicate, not a second run."""
    chain = GuardChain(r, settings(), spec(lock=False))
    adm = chain.admit("t", "t/x", "same")
    chain.complete(adm, "t", "t/x", success=True)
    dup = chain.admit("t", "t/x", "same")
    assert (dup.admitted, dup.decision) == (False, "duplicate")


def test_budget_refuses_and_refusal_undoes_the_lock(r: redis.Redis) -> None:
    """Over the hourly budget the call is refused and its lock is not left behind."""
    chain = GuardChain(r, settings(), spec(max_per_hour=2))
    for i in range(2):
        chain.complete(chain.admit("t", f"t/{i}", f"k{i}"), "t", f"t/{i}", success=True)
    refused = chain.admit("t", "t/9", "k9")
    assert (refused.admitted, refused.guard) == (False, "budget")
    assert r.get(keys.lock("poke_thing", "t/9")) is None
    assert r.get(keys.idempotency("k9")) is None


def test_pause_suppresses_everything_until_resumed(r: redis.Redis) -> None:
    """A maintenance pause suppresses every action until it is cleared."""
    chain = GuardChain(r, settings(), spec())
    set_pause(r, "db migration", None)
    adm = chain.admit("t", "t/x", "k1")
    assert (adm.admitted, adm.guard) == (False, "pause")
    assert "db migration" in adm.reason
    clear_pause(r)
    assert chain.admit("t", "t/x", "k2").admitted


def test_dry_run_global_and_per_action(r: redis.Redis) -> None:
    """Dry-run decides but never admits, globally or for one named action."""
    for s in (settings(dry_run=True), settings(dry_run_actions=["poke_thing"])):
        adm = GuardChain(r, s, spec()).admit("t", "t/x", "k1")
        assert (adm.admitted, adm.decision) == (False, "dry_run")
        assert r.get(keys.lock("poke_thing", "t/x")) is None
    assert (
        GuardChain(r, settings(dry_run_actions=["other"]), spec()).admit("t", "t/x", "k").admitted
    )


def test_open_breaker_suppresses(r: redis.Redis) -> None:
    """Failures past the threshold open the breaker and later calls are suppressed."""
    s = Settings(breaker={"minimum_calls": 2, "wait_seconds": 600})  # type: ignore[arg-type]
    chain = GuardChain(r, s, spec())
    transitions = [
        chain.complete(chain.admit("t", "t/x", f"k{i}"), "t", "t/x", False) for i in range(2)
    ]
    assert transitions == ["", "opened"]
    adm = chain.admit("t", "t/x", "k9")
    assert (adm.admitted, adm.guard) == (False, "breaker")


def test_redis_down_is_guard_unavailable() -> None:
    """With guard state unreachable, admission raises GuardUnavailable (never acts)."""
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    with pytest.raises(GuardUnavailable):
        GuardChain(dead, settings(), spec()).admit("t", "t/x", "k")
