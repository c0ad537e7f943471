"""The guard Lua scripts decide the same on fakeredis (the unit tier) as on a real redis-server.

The same seeded sequence of calls (admit, complete, abandon, pause, blast-radius grants,
hysteresis streaks, breaker permits) runs step by step on both; every answer and the shape
of the state after every step (key names, types, whether they expire) must be equal.
"""

from __future__ import annotations

import random
import re
import time
from datetime import timedelta
from typing import Any

import fakeredis
import redis

from remediation.guards import keys
from remediation.guards.breaker import Breaker
from remediation.guards.chain import Admission, GuardChain, clear_pause, set_pause
from remediation.guards.lua import script
from remediation.params import ActionParams
from remediation.registry import ActionSpec, GuardOptions
from remediation.settings import BreakerSettings, Settings

STEPS = 400
RESOURCES = ("t/a", "t/b", "t/c")
# reasons quoting a TTL or the server's clock may differ by the second the two calls straddle
_TTL_GUARDS = ("cooldown", "flap", "resume")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _spec(name: str, **options: Any) -> ActionSpec:
    return ActionSpec(
        name, lambda ctx, p: None, ActionParams, "doc", lambda ctx, p: p, GuardOptions(**options)
    )


SPECS = (
    _spec("poke_a", cooldown=timedelta(seconds=60), max_per_hour=6),
    _spec("poke_b"),
    _spec("poke_c", lock=False, breaker=False, flap=False, max_per_hour=10),
)
SETTINGS = Settings(
    guards={"flap_max_runs": 2, "blast_radius": {"poke_b": {"units": 12}}},  # type: ignore[arg-type]
    breaker={"minimum_calls": 4, "failure_rate_threshold": 0.5},  # type: ignore[arg-type]
)


def _shape(client: redis.Redis) -> dict[str, tuple[str, bool]]:
    """{key: (type, expires)} of every key."""
    return {k.decode(): (client.type(k).decode(), client.pttl(k) > 0) for k in client.keys("*")}


def _answer(adm: Admission) -> tuple[Any, ...]:
    numbers = [float(n) for n in _NUMBER.findall(adm.reason)]
    reason = _NUMBER.sub("N", adm.reason) if adm.guard in _TTL_GUARDS else adm.reason
    return (
        adm.admitted,
        adm.decision,
        adm.guard,
        reason,
        adm.breaker_state,
        adm.resumed,
        adm.flap_escalate,
        adm.blast_granted,
        numbers if adm.guard in _TTL_GUARDS else [],
    )


def _same(real: Any, fake: Any, step: int, op: tuple[Any, ...]) -> None:
    if isinstance(real, tuple) and real and isinstance(real[-1], list) and real[-1]:
        ttl_real, ttl_fake = real[-1], fake[-1]
        assert len(ttl_real) == len(ttl_fake)
        assert all(abs(a - b) <= 1 for a, b in zip(ttl_real, ttl_fake, strict=True)), (step, op)
        real, fake = real[:-1], fake[:-1]
    assert real == fake, f"step {step} {op}: real {real!r} != fakeredis {fake!r}"


def _ops(rng: random.Random) -> list[tuple[Any, ...]]:
    """A sequence of calls, decided up front so both backends get exactly the same one."""
    ops: list[tuple[Any, ...]] = []
    for step in range(STEPS):
        spec = rng.randrange(len(SPECS))
        roll = rng.random()
        if roll < 0.45:  # a few idempotency keys and task ids, so duplicates and resumes occur
            key = f"k{rng.randrange(40)}"
            task = f"task{rng.randrange(6)}"
            upfront = rng.choice((None, 1, 2)) if SPECS[spec].name == "poke_b" else None
            ops.append(("admit", spec, rng.choice(RESOURCES), key, task, upfront))
        elif roll < 0.5:  # its worker died mid-action: the same task delivered again
            ops.append(("redeliver", rng.random()))
        elif roll < 0.7:
            ops.append(("complete", rng.random() < 0.6, rng.randrange(3), rng.random()))
        elif roll < 0.78:
            ops.append(("abandon", rng.random()))
        elif roll < 0.83:
            ops.append(("pause",) if rng.random() < 0.4 else ("resume",))
        elif roll < 0.9:
            ops.append(("reserve", rng.randrange(1, 4), f"g{step}"))
        else:
            fingerprints = rng.sample(["f1", "f2", "f3", "f4"], rng.randrange(0, 4))
            ops.append(("streak", rng.choice(("c1", "c2")), fingerprints))
    return ops


class Backend:
    """One Redis (real or fake) and the admissions it holds open."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self.chains = [GuardChain(client, SETTINGS, spec) for spec in SPECS]
        self.open: list[tuple[int, str, str, str, Admission]] = []

    def run(self, op: tuple[Any, ...]) -> Any:
        kind = op[0]
        if kind == "redeliver":
            if not self.open:
                return None
            spec, resource, key, task, _ = self.open[int(op[-1] * len(self.open))]
            op = ("admit", spec, resource, key, task, None)
        if op[0] == "admit":
            _, spec, resource, key, task, upfront = op
            adm = self.chains[spec].admit("t", resource, f"{spec}:{key}", task, upfront)
            if adm.admitted and adm.guard != "resume":
                self.open.append((spec, resource, key, task, adm))
            return _answer(adm)
        if kind in ("complete", "abandon"):
            if not self.open:
                return None
            spec, resource, _, _, adm = self.open.pop(int(op[-1] * len(self.open)))
            if kind == "abandon":
                return self.chains[spec].abandon(adm, "t", resource)
            return self.chains[spec].complete(adm, "t", resource, op[1], op[2])
        if kind == "pause":
            return set_pause(self.r, "maintenance", 600)
        if kind == "resume":
            return clear_pause(self.r)
        if kind == "reserve":
            return self.chains[1].reserve(op[1], op[2])
        counts = script(self.r, "streak")(keys=[keys.streak(op[1], "t")], args=[3600, *op[2]])
        return [int(n) for n in counts]


def test_guard_scripts_decide_alike_on_fakeredis_and_redis_server(r: redis.Redis) -> None:
    """400 seeded guard calls on a real redis-server and on fakeredis: every decision,
    transition, grant and streak count is equal, and so is the state's shape after each."""
    real = Backend(r)
    fake = Backend(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    decisions: set[str] = set()
    for step, op in enumerate(_ops(random.Random(12))):
        answer = real.run(op)
        _same(answer, fake.run(op), step, op)
        assert _shape(real.r) == _shape(fake.r), f"state after step {step} {op}"
        if op[0] in ("admit", "redeliver") and answer is not None:
            decisions.add(answer[2] or answer[1])
    # the sequence reached every guard it can, or it proves less than it says
    assert decisions >= {
        "admitted",
        "idempotency",
        "lock",
        "cooldown",
        "budget",
        "flap",
        "blast",
        "pause",
        "breaker",
        "resume",
    }


def test_breaker_half_open_permits_alike_on_fakeredis_and_redis_server(r: redis.Redis) -> None:
    """Open after two failures, refused while open, one half-open permit after the wait,
    closed by a successful trial: the same answers on both."""
    config = BreakerSettings(minimum_calls=2, wait_seconds=1, half_open_permits=1)

    def run(client: redis.Redis) -> list[Any]:
        breaker = Breaker(client, "poke:t", config)
        seen: list[Any] = []
        for _ in range(2):
            permit = breaker.acquire()
            seen += [permit.allowed, permit.state, breaker.record(permit, success=False)]
        seen.append(breaker.acquire().allowed)
        time.sleep(1.1)
        trial, second = breaker.acquire(), breaker.acquire()
        seen += [trial.allowed, trial.state, second.allowed, breaker.record(trial, True)]
        return seen

    fake = run(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    assert run(r) == fake
    assert fake == [
        True,
        "closed",
        "",
        True,
        "closed",
        "opened",
        False,
        True,
        "half_open",
        False,
        "closed",
    ]
