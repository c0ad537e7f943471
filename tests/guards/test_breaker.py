"""Circuit breaker semantics and atomicity, against a real redis-server."""

from __future__ import annotations

import multiprocessing
import time

import redis

from remediation.guards import breaker as breaker_mod
from remediation.guards.breaker import Breaker
from remediation.settings import BreakerSettings

CFG = BreakerSettings(
    failure_rate_threshold=0.5,
    minimum_calls=4,
    window_seconds=60,
    wait_seconds=1,
    half_open_permits=1,
    permit_lease_seconds=30,
)


def call(b: Breaker, success: bool) -> str:
    permit = b.acquire()
    assert permit.allowed
    return b.record(permit, success)


def test_stays_closed_below_minimum_calls(r: redis.Redis) -> None:
    """Three failures out of three do not open a breaker that needs four calls."""
    b = Breaker(r, "act:t", CFG)
    assert [call(b, False) for _ in range(3)] == ["", "", ""]
    assert b.acquire().state == "closed"


def test_opens_at_failure_rate_and_refuses(r: redis.Redis) -> None:
    """Two failures in four calls reach 50 % and open; the next call is refused."""
    b = Breaker(r, "act:t", CFG)
    assert [call(b, s) for s in (True, False, True, False)] == ["", "", "", "opened"]
    permit = b.acquire()
    assert (permit.allowed, permit.state) == (False, "open")


def test_below_threshold_stays_closed(r: redis.Redis) -> None:
    """One failure in four calls (25 %) keeps the breaker closed."""
    b = Breaker(r, "act:t", CFG)
    assert [call(b, s) for s in (True, True, True, False)] == ["", "", "", ""]


def test_half_open_success_closes_failure_reopens(r: redis.Redis) -> None:
    """After the wait a trial is allowed; success closes, a failed trial re-opens."""
    b = Breaker(r, "act:t", CFG)
    for _ in range(4):
        call(b, False)
    time.sleep(1.1)
    trial = b.acquire()
    assert (trial.allowed, trial.state) == (True, "half_open")
    assert b.acquire().allowed is False  # only one trial permit
    assert b.record(trial, False) == "opened"
    time.sleep(1.1)
    assert call(b, True) == "closed"
    assert b.acquire().state == "closed"


def test_expired_trial_lease_frees_the_permit(r: redis.Redis) -> None:
    """A trial whose worker died frees its permit when the lease runs out."""
    cfg = CFG.model_copy(update={"permit_lease_seconds": 1})
    b = Breaker(r, "act:t", cfg)
    for _ in range(4):
        call(b, False)
    time.sleep(1.1)
    assert b.acquire().allowed
    assert not b.acquire().allowed
    time.sleep(1.1)
    assert b.acquire().allowed


def test_reset_closes_and_snapshot_lists(r: redis.Redis) -> None:
    """`breakers reset` closes an open breaker; unknown names are refused."""
    b = Breaker(r, "act:t", CFG)
    for _ in range(4):
        call(b, False)
    assert breaker_mod.snapshot(r)[0]["state"] == "open"
    assert breaker_mod.reset(r, "act:t") is True
    assert breaker_mod.reset(r, "nope:t") is False
    assert breaker_mod.snapshot(r)[0]["state"] == "closed"
    assert b.acquire().allowed


def _race(
    url: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue
) -> None:  # type: ignore[name-defined]
    b = Breaker(redis.Redis.from_url(url), "race:t", CFG)
    barrier.wait()
    out.put(b.acquire().allowed)


def test_one_half_open_permit_across_eight_processes(r: redis.Redis, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Eight processes racing for one half-open trial permit: exactly one gets it."""
    b = Breaker(r, "race:t", CFG)
    for _ in range(4):
        call(b, False)
    time.sleep(1.1)
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(redis_server.url(0), barrier, out)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    granted = [out.get(timeout=5) for _ in procs]
    assert granted.count(True) == 1
