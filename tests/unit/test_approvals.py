"""Approvals in the unit tier: one approval per call, one decision however many decide at
once, expiry, a claim per approved call, signed links, and the runner asking before the
guards then acting once on approval (fakeredis with Lua, the in-memory audit store)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis

from remediation import signing
from remediation.approvals import Approvals, header, links
from remediation.approvals import state as appr
from remediation.audit.memory import MemoryAuditStore
from remediation.context import Trigger
from remediation.guards import keys
from remediation.runner import Runner
from remediation.settings import get_settings
from tests.unit.doubles import ACTION, Probe, Recorder, stuck

KEY = b"unit-signing-key-" + b"0123456789abcdef" * 2


def asked(r: fakeredis.FakeRedis, call: str = "poke_thing:self/x:task:1") -> appr.Asked:
    return appr.ask(
        r,
        action="poke_thing",
        target="self",
        resource="self/x",
        params={"target": "self", "thing": "x"},
        plan={"summary": "poke x", "items": [], "more": 0},
        idempotency_key=call,
        trigger=None,
        fingerprint=None,
        ttl_seconds=60,
    )


def test_one_approval_per_call_until_it_ran(state: fakeredis.FakeRedis) -> None:
    """Asking again for the same call gives the same approval (pending, then denied); a call
    whose approval ran may be asked for again."""
    first = asked(state)
    again = asked(state)
    assert first.new and not again.new and again.approval.id == first.approval.id
    service = Approvals(get_settings(), MemoryAuditStore())
    assert service.decide(first.approval.id, False, "ops", "no").result == "denied"
    denied = asked(state)
    assert not denied.new and denied.approval.state == "denied"
    state.hset(keys.approval(first.approval.id), "state", "done")
    assert asked(state).new


def test_racing_deciders_get_one_decision(state: fakeredis.FakeRedis) -> None:
    """Twenty approvers and deniers at once: exactly one decision, audited once."""
    pending = asked(state).approval
    store = MemoryAuditStore()
    sent: list[Any] = []
    service = Approvals(get_settings(), store, lambda *a, **kw: sent.append((a, kw)))

    def decide(n: int) -> str:
        return service.decide(pending.id, n % 2 == 0, f"op{n}", "").result

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(decide, range(20)))
    assert results.count("approved") + results.count("denied") == 1
    assert results.count("already") == 19
    rows = [r for r in store.rows("guard_decisions") if r["guard"] == "approval"]
    assert len(rows) == 1
    assert len(sent) == results.count("approved")


def test_a_due_approval_expires_instead_of_being_decided(state: fakeredis.FakeRedis) -> None:
    """Past its time, approving it expires it (audited as expired); the expiry sweep takes
    only due ones."""
    due, fresh = asked(state, "a").approval, asked(state, "b").approval
    state.hset(keys.approval(due.id), "expires_at", repr(time.time() - 1))
    state.zadd(keys.APPROVALS_PENDING, {due.id: time.time() - 1})
    store = MemoryAuditStore()
    service = Approvals(get_settings(), store)
    assert service.expire_due() == 1
    assert state.hget(keys.approval(fresh.id), "state") == b"pending"
    assert service.decide(due.id, True, "late", "").result == "already"
    assert [r["decision"] for r in store.rows("guard_decisions")] == ["expired"]


def test_an_approved_call_is_claimed_once(state: fakeredis.FakeRedis) -> None:
    """The first task claims the approved call (and may be delivered again); another task,
    or a pending or denied approval, gets nothing."""
    pending = asked(state).approval
    assert appr.claim(state, pending.id, "t1")[0] is False  # not approved
    state.hset(keys.approval(pending.id), "state", "approved")
    assert appr.claim(state, pending.id, "t1") == (True, "")
    assert appr.claim(state, pending.id, "t1") == (True, "")
    ok, why = appr.claim(state, pending.id, "t2")
    assert not ok and "already runs as task t1" in why


def test_links_decide_only_what_they_name_until_they_expire() -> None:
    """A link is valid for its approval, decision and expiry; any change, or time, ends it."""
    later = int(time.time()) + 60
    url = links.make(KEY, "https://r.example", "0123456789abcdef", "approve", later)
    sig = url.rsplit("sig=", 1)[1]
    assert links.check(KEY, "0123456789abcdef", "approve", str(later), sig) is None
    assert links.check(KEY, "0123456789abcdef", "deny", str(later), sig) is not None
    assert links.check(KEY, "0123456789abcdee", "approve", str(later), sig) is not None
    assert links.check(KEY, "0123456789abcdef", "approve", str(later + 1), sig) is not None
    assert links.check(b"x" * 40, "0123456789abcdef", "approve", str(later), sig) is not None
    past = int(time.time()) - 1
    old = links.make(KEY, "https://r.example", "0123456789abcdef", "approve", past).rsplit("=", 1)
    assert links.check(KEY, "0123456789abcdef", "approve", str(past), old[1]) == (
        "this link has expired"
    )


def test_runner_asks_before_the_guards_and_acts_once_when_approved(
    runner: Callable[..., Runner], probe: Probe, sent: Recorder, store: MemoryAuditStore
) -> None:
    """A finding whose action needs approval waits (no guard touched, nothing done); the
    approved call runs once; a copy of it, or a call naming a forged approval, runs nothing."""
    made = runner(REMEDIATION_APPROVALS__REQUIRE=f'["{ACTION}"]')
    probe.findings = [stuck("self", "x")]
    made.run_check("unit_probe", {"target": "self"})
    ((_task, kwargs, trigger),) = [s for s in sent.sent if s[0].endswith(ACTION)]
    waiting = made.run_action(ACTION, kwargs, task_id="t-ask", trigger=trigger)
    assert waiting.outcome == "pending_approval" and probe.acted == []
    approval_id = waiting.result["approval"]  # type: ignore[index]
    again = made.run_action(ACTION, kwargs, task_id="t-again", trigger=trigger)
    assert again.outcome == "pending_approval" and again.result["approval"] == approval_id  # type: ignore[index]
    calls: list[tuple[str, dict[str, Any], Trigger | None, str | None]] = []
    service = Approvals(
        made.settings, store, lambda t, k, tr, approval=None: calls.append((t, k, tr, approval))
    )
    assert service.decide(approval_id, True, "ops", "go").ok
    ((t, k, tr, aid),) = calls
    key = signing.key_of(made.settings)
    ran = made.run_action(ACTION, k, task_id="t-run", trigger=tr, approval=header(key, aid, t))
    assert ran.outcome == "succeeded" and len(probe.acted) == 1
    assert probe.acted[0][1].approved == frozenset({"resource:self/x"})
    copy = made.run_action(ACTION, k, task_id="t-copy", trigger=tr, approval=header(key, aid, t))
    assert copy.outcome == "refused" and len(probe.acted) == 1
    forged = {"id": aid, "sig": "0" * 64}
    assert made.run_action(ACTION, k, task_id="t-forged", approval=forged).outcome == "refused"
    assert len(probe.acted) == 1
