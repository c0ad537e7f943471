"""Issue 6 guards against a real redis-server: redelivery resumes, flap guard, blast radius."""

from __future__ import annotations

import multiprocessing
import uuid
from typing import Any

import redis

from remediation.guards import keys
from remediation.guards.chain import BlastAccount, GuardChain
from remediation.settings import BlastCap, Settings
from tests.support.runner import spec


def test_same_task_again_resumes_other_task_is_duplicate(r: redis.Redis) -> None:
    """The claim names its task: the same task delivered again (its worker died) resumes,
    with the original claim time; another task with the same key is a duplicate."""
    chain = GuardChain(r, Settings(), spec())
    first = chain.admit("t", "t/x", "incident-1", "task-a")
    assert first.admitted and not first.resumed
    other = chain.admit("t", "t/x", "incident-1", "task-b")
    assert (other.admitted, other.decision) == (False, "duplicate")
    again = chain.admit("t", "t/x", "incident-1", "task-a")  # redelivered after a SIGKILL
    assert again.admitted and again.resumed and again.guard == "resume"
    assert again.claimed_at == first.claimed_at
    chain.complete(again, "t", "t/x", success=True)
    done = chain.admit("t", "t/x", "incident-1", "task-a")  # a third delivery after success
    assert (done.admitted, done.decision, done.reason) == (
        False,
        "duplicate",
        "already done for this incident",
    )


def test_flap_guard_suspends_after_n_runs_and_escalates_once(r: redis.Redis) -> None:
    """N runs within the window on one target: the next is refused, the suspension starts
    once (flap_escalate on exactly one refusal), other targets are not affected."""
    s = Settings(guards={"flap_max_runs": 3, "flap_window_minutes": 10})  # type: ignore[arg-type]
    chain = GuardChain(r, s, spec())
    for n in range(3):
        adm = chain.admit("t", "t/x", f"k{n}", f"task{n}")
        assert adm.admitted
        chain.complete(adm, "t", "t/x", success=True)
    refusals = [chain.admit("t", "t/x", f"k{n}", f"task{n}") for n in range(3, 7)]
    assert {(a.decision, a.guard) for a in refusals} == {("suppressed", "flap")}
    assert [a.flap_escalate for a in refusals] == [True, False, False, False]
    assert 0 < r.ttl(keys.flap_suspended("poke_thing", "t/x")) <= s.guards.flap_suspend_minutes * 60
    assert chain.admit("t", "t/y", "k-other", "task-other").admitted


def test_flap_override_and_opt_out(r: redis.Redis) -> None:
    """A per-action override changes N; an action declared flap=False is never suspended."""
    s = Settings(guards={"flap_max_runs": 50, "flap_overrides": {"poke_thing": 2}})  # type: ignore[arg-type]
    chain = GuardChain(r, s, spec(lock=False))
    assert [chain.admit("t", "t/o", f"o{n}", f"o{n}").admitted for n in range(3)] == [
        True,
        True,
        False,
    ]
    free = GuardChain(r, s, spec(lock=False, flap=False))
    assert all(free.admit("t", "t/p", f"p{n}", f"p{n}").admitted for n in range(10))


def _reserve_many(url: str, rounds: int, queue: Any) -> None:
    s = Settings(guards={"blast_radius": {"poke_thing": BlastCap(units=37, window_seconds=60)}})  # type: ignore[arg-type]
    chain = GuardChain(redis.Redis.from_url(url), s, spec())
    queue.put(sum(chain.reserve(3, uuid.uuid4().hex) for _ in range(rounds)))


def blast_settings(units: int = 37) -> Settings:
    return Settings(
        guards={"blast_radius": {"poke_thing": BlastCap(units=units, window_seconds=60)}}
    )  # type: ignore[arg-type]


def test_blast_radius_is_shared_by_every_process(redis_server: Any, r: redis.Redis) -> None:
    """10 units taken here, then eight processes ask for 3 units 10 times each (240)
    against a cap of 37 in the window: exactly 27 more are granted in total, and admission
    refuses once the cap is spent; units given back are available again."""
    chain = GuardChain(r, blast_settings(), spec())
    assert chain.reserve(10, "mine") == 10
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_reserve_many, args=(redis_server.url(), 10, queue)) for _ in range(8)
    ]
    for p in procs:
        p.start()
    granted = sum(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert granted == 27
    adm = chain.admit("t", "t/z", "kz", "tz", upfront=3)
    assert (adm.decision, adm.guard, adm.reason) == (
        "suppressed",
        "blast",
        "blast-radius cap reached (37/37 units in the window)",
    )
    # an action without upfront units may act without any (a give-up): admitted, and its
    # own reservation gets nothing
    free = chain.admit("t", "t/y", "ky", "ty")
    assert free.admitted and chain.reserve(1, "give-up") == 0
    chain.abandon(free, "t", "t/y")
    chain.refund("mine", 10, 5)  # the grant shrinks in place
    assert chain.admit("t", "t/z", "kz", "tz", upfront=3).admitted
    assert chain.reserve(10, "more") == 2


def test_admission_reserves_upfront_and_completion_gives_back(r: redis.Redis) -> None:
    """The admitting call reserves the action's upfront units (no extra round trip); the
    account hands them out first, asks Redis only beyond them, and what was not used goes
    back at completion."""
    chain = GuardChain(r, blast_settings(20), spec(lock=False))
    adm = chain.admit("t", "t/u", "ku", "tu", upfront=8)
    assert adm.admitted and adm.blast_granted == 8
    account = BlastAccount(chain, pool=adm.blast_granted)
    assert account.take(5) == 5 and account.pool == 3
    assert account.take(6) == 6  # 3 from the pool, 3 from a new grant
    account.take(-4)  # the action used 4 fewer than it took
    chain.complete(adm, "t", "t/u", True, account.settle(adm.blast_granted))
    assert chain.reserve(100, "rest") == 20 - 7  # 7 units stay used in the window
    second = chain.admit("t", "t/v", "kv", "tv", upfront=8)
    assert (second.decision, second.guard) == ("suppressed", "blast")
