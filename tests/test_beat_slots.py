"""Exactly-once schedule slots: two SlotSchedulers driven in-process against one Redis, the
messages they send run by the real check task, every slot counted from the audit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis

from remediation import beat, slots
from remediation.audit.store import AuditStore
from remediation.beat import SlotEntry, SlotScheduler

ENTRIES = 6
INTERVAL = 600  # on a frozen clock moved by the test: the slots are what it says they are
ROUNDS = 3
KEY = f"slot_probe_{uuid.uuid4().hex[:8]}_"  # this session's rows only


_APPS: list[Celery] = []
# a second Celery app in a process that already built one registers the same task names
pytestmark = pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")


def schedule_module(entries: int) -> str:
    return (
        "SCHEDULE = {\n"
        + "".join(
            f"    'slot{i}': {{'task': 'remediation.check.redis_job_queue', "
            f"'schedule': {INTERVAL}, 'kwargs': {{'target': 'self', 'key': '{KEY}{i}'}}}},\n"
            for i in range(entries)
        )
        + "}\n"
    )


@pytest.fixture
def app(
    settings_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> Iterator[Celery]:
    """A fresh Celery app on the test services with a schedule of hourly probe entries."""
    (tmp_path / "slot_schedule.py").write_text(schedule_module(ENTRIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    settings_env(REMEDIATION_SCHEDULE_MODULE="slot_schedule")
    from remediation.celery_app import get_app

    if not _APPS:  # one app for the module: tasks registered once
        _APPS.append(get_app.__wrapped__())  # type: ignore[attr-defined]
    yield _APPS[0]


class Clock:
    """The time the schedulers' grid is read with (remediation.beat.now), frozen at the real
    time, moved one interval a round (a new entry first falls due one interval after it is
    stored); redbeat and Celery read app.now, moved with it."""

    def __init__(self, app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = time.time()
        monkeypatch.setattr(beat, "now", lambda: self.now)
        monkeypatch.setattr(app, "now", lambda: datetime.fromtimestamp(self.now, UTC))


class Sent:
    """Messages the schedulers sent, captured instead of published, run later in-process."""

    def __init__(self, app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
        self.app = app
        self.messages: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        task = app.tasks["remediation.check.redis_job_queue"]

        def capture(args: Any, kwargs: Any, producer: Any = None, **options: Any) -> None:
            self.messages.append((task.name, dict(kwargs), dict(options.get("headers") or {})))

        monkeypatch.setattr(task, "apply_async", capture)

    def run_all(self) -> None:
        """Run every captured message with its headers, as a worker would."""
        for name, kwargs, headers in self.messages:
            self.app.tasks[name].apply(kwargs=kwargs, headers=headers, task_id=str(uuid.uuid4()))
        self.messages.clear()


def scheduler(app: Celery, *, lock: bool) -> SlotScheduler:
    """A SlotScheduler with no broker; holding the redbeat lock if lock, else with its lock
    check bypassed (the cut-off beat that has not noticed)."""
    s = SlotScheduler(app, lazy=False)
    s.__dict__["_maybe_due_kwargs"] = {"producer": None}
    if lock:
        client = get_redis(app)
        s.lock = client.lock(s.lock_key, timeout=s.lock_timeout, sleep=0.1)
        s.lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        assert s.lock.acquire(blocking=False)
    else:
        s.lock_key = None
    return s


def loaded(app: Celery) -> dict[str, SlotEntry]:
    """The entries as a beat holds them after reading Redis at the start of a tick."""
    names = [f"slot{i}" for i in range(ENTRIES)]
    return {n: SlotEntry.from_key(SlotEntry.generate_key(app, n), app=app) for n in names}


def fire(s: SlotScheduler, entries: dict[str, SlotEntry]) -> None:
    for entry in entries.values():
        s.maybe_due(entry, producer=None)


def counts(store: AuditStore) -> dict[str, dict[str, int]]:
    """status -> {probe key: check runs} from the audit."""
    rows = store.query(
        "SELECT params->>'key' AS key, status, count(*) AS n FROM check_runs"
        " WHERE params->>'key' LIKE %s GROUP BY 1, 2",
        (KEY + "%",),
    )
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        out.setdefault(row["status"], {})[row["key"]] = int(row["n"])
    return out


def audit(app: Celery) -> AuditStore:
    from remediation.settings import get_settings

    return AuditStore(get_settings().audit_dsn.get_secret_value())


def test_two_beats_firing_the_same_slots_run_each_once(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two beats fire every slot (the second from stale state, lock check bypassed): each
    slot runs once, counted from the audit, and each second firing is audited 'duplicate'."""
    clock, sent, store = Clock(app, monkeypatch), Sent(app, monkeypatch), audit(app)
    active, cut_off = scheduler(app, lock=True), scheduler(app, lock=False)
    for _ in range(ROUNDS):
        clock.now += INTERVAL
        stale = loaded(app)  # the cut-off beat read Redis before the active one fired
        fire(active, loaded(app))
        fire(cut_off, stale)
        assert len(sent.messages) == 2 * ENTRIES, "both beats must have fired every entry"
        headers = [h[slots.SLOT_HEADER] for _, _, h in sent.messages]
        assert len({(h["entry"], h["slot"]) for h in headers}) == ENTRIES, "same slot, same name"
        sent.run_all()
    seen = counts(store)
    print(
        f"\ntwo beats: {ENTRIES} entries x {ROUNDS} slots, fired {2 * ENTRIES * ROUNDS} times;"
        f" ran {sum(seen.get('ok', {}).values())}, duplicates {sum(seen.get('duplicate', {}).values())}"
    )
    assert seen.get("ok") == {f"{KEY}{i}": ROUNDS for i in range(ENTRIES)}
    assert seen.get("duplicate") == {f"{KEY}{i}": ROUNDS for i in range(ENTRIES)}
    assert set(seen) == {"ok", "duplicate"}


def test_a_beat_whose_lock_was_taken_stops_sending(
    app: Celery, monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    """Another beat takes the lock: the first sends nothing (mid-tick or at its next tick)
    until the lock is free again, then it takes it back and fires the due slots once."""
    clock, sent = Clock(app, monkeypatch), Sent(app, monkeypatch)
    active = scheduler(app, lock=True)
    clock.now += INTERVAL
    active.tick()
    assert len(sent.messages) == ENTRIES  # holding the lock, it fires
    sent.messages.clear()
    clock.now += INTERVAL
    r.set(active.lock_key, "another-beat", px=60_000)  # taken by another beat
    fire(active, loaded(app))  # mid-tick: the lock confirmed before each send
    assert sent.messages == [] and active.lost
    active.tick()  # the next tick: extend fails, the lock is held: nothing
    assert sent.messages == [] and active.lost
    r.delete(active.lock_key)  # the other beat is gone
    active.tick()
    assert not active.lost and r.get(active.lock_key) is not None
    assert len(sent.messages) == ENTRIES


def test_calls_by_hand_redeliveries_and_forged_headers_always_run(app: Celery) -> None:
    """No header, the same message delivered again (same task id) and a forged header each
    run the check: only a second message of a signed slot is skipped."""
    from remediation.settings import get_settings

    task, store = app.tasks["remediation.check.redis_job_queue"], audit(app)
    kwargs = {"target": "self", "key": f"{KEY}hand"}
    key = get_settings().signing_key.get_secret_value().encode()  # type: ignore[union-attr]
    signed = {slots.SLOT_HEADER: slots.header(key, "hand", time.time(), 60)}
    forged = {slots.SLOT_HEADER: slots.header(b"x" * 32, "hand-forged", time.time(), 60)}
    statuses = [
        task.apply(kwargs=kwargs, headers=h, task_id=tid).get()["status"]
        for h, tid in [
            ({}, "hand-1"),
            ({}, "hand-2"),
            (signed, "slot-1"),
            (signed, "slot-1"),  # its worker died: the same message again
            (signed, "slot-2"),  # another beat's message for the same slot
            (forged, "forged-1"),
            (forged, "forged-2"),
        ]
    ]
    assert statuses == ["ok", "ok", "ok", "ok", "duplicate", "ok", "ok"]
    assert counts(store).get("duplicate", {}).get(f"{KEY}hand") == 1


def test_missed_slots_after_an_outage_run_once_at_once(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After five intervals with no beat, each entry fires once at the next tick, for the
    latest slot, and the check runs once (audited); then it is back on its grid."""
    clock, sent = Clock(app, monkeypatch), Sent(app, monkeypatch)
    active = scheduler(app, lock=True)
    clock.now += 5 * INTERVAL + 1
    active.tick()
    assert sorted(h[slots.SLOT_HEADER]["entry"] for _, _, h in sent.messages) == [
        f"slot{i}" for i in range(ENTRIES)
    ]
    offsets = app.conf.remediation_slot_offsets
    for _, _, h in sent.messages:
        mark = h[slots.SLOT_HEADER]
        assert mark["slot"] == round(slots.grid_slot(clock.now, INTERVAL, offsets[mark["entry"]]))
    statuses = []
    for name, kwargs, headers in sent.messages:
        result = app.tasks[name].apply(kwargs=kwargs, headers=headers, task_id=str(uuid.uuid4()))
        statuses.append(result.get()["status"])
    assert statuses == ["ok"] * ENTRIES
    sent.messages.clear()
    active.tick()  # the same instant again: nothing more is due
    assert sent.messages == []


def test_a_beat_cut_off_from_redis_sends_nothing_and_carries_on(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stops answering the active beat (its lock extension times out): the tick sends
    nothing and returns instead of ending the beat; once Redis answers, it fires again."""
    clock, sent = Clock(app, monkeypatch), Sent(app, monkeypatch)
    active = scheduler(app, lock=True)
    extend = active.lock.extend
    cut = [True]

    def cut_off(*args: Any, **kwargs: Any) -> Any:
        if cut[0]:
            raise redis.TimeoutError("Timeout reading from socket")
        return extend(*args, **kwargs)

    monkeypatch.setattr(active.lock, "extend", cut_off)
    clock.now += INTERVAL
    assert active.tick() == active.max_interval
    assert sent.messages == [] and active.unreachable
    cut[0] = False
    active.tick()
    assert not active.unreachable and not active.lost
    assert len(sent.messages) == ENTRIES


def test_a_standby_whose_first_acquire_failed_waits_then_takes_the_lock(
    app: Celery, monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    """A beat whose blocking acquire at start failed (Redis did not answer: redbeat leaves
    it no lock) sends nothing while another beat holds the lock or Redis is unreachable,
    and takes the lock once it is free."""
    clock, sent = Clock(app, monkeypatch), Sent(app, monkeypatch)
    standby = SlotScheduler(app, lazy=False)
    standby.__dict__["_maybe_due_kwargs"] = {"producer": None}
    assert standby.lock is None and standby.lock_key
    clock.now += INTERVAL

    def unreachable(app: Celery) -> Any:
        raise redis.ConnectionError("Timeout connecting to server")

    with monkeypatch.context() as m:
        m.setattr(beat, "get_redis", unreachable)
        assert standby.tick() == standby.max_interval
    assert sent.messages == [] and standby.lock is None and standby.unreachable
    r.set(standby.lock_key, "another-beat", px=60_000)
    standby.tick()
    assert sent.messages == [] and standby.lock is None
    fire(standby, loaded(app))  # never sends without a lock
    assert sent.messages == []
    r.delete(standby.lock_key)
    standby.tick()
    assert standby.lock is not None and r.get(standby.lock_key) is not None
    assert len(sent.messages) == ENTRIES


def test_missed_slots_are_counted_and_audited(
    app: Celery, monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    """A firing that follows slots nobody fired (the beat was down for four intervals) is
    audited with how many it follows: an observation beat / <entry> / missed_slots; a
    firing on time, a late redelivery and a duplicate add none."""
    from remediation.guards import keys
    from remediation.tasks import MISSED_CHECK, MISSED_METRIC

    r.delete(*[keys.slot_last(f"slot{i}") for i in range(ENTRIES)])  # earlier tests' clocks
    clock, sent = Clock(app, monkeypatch), Sent(app, monkeypatch)
    active = scheduler(app, lock=True)
    fired: list[dict[str, int]] = []
    for step in (INTERVAL + 1, INTERVAL, 4 * INTERVAL):  # first firing, on time, after a gap
        clock.now += step
        active.tick()
        fired.append(
            {
                h[slots.SLOT_HEADER]["entry"]: h[slots.SLOT_HEADER]["slot"]
                for _, _, h in sent.messages
            }
        )
        sent.run_all()
    entries = {f"slot{i}" for i in range(ENTRIES)}
    assert all(set(f) == entries for f in fired)
    rows = audit(app).query(
        "SELECT target, value FROM observations WHERE check_name = %s AND metric = %s"
        " AND target = ANY(%s)",
        (MISSED_CHECK, MISSED_METRIC, sorted(entries)),
    )
    expected = {e: (fired[2][e] - fired[1][e]) // INTERVAL - 1 for e in entries}
    assert all(n >= 3 for n in expected.values())  # four intervals with no beat
    assert {r["target"]: int(r["value"]) for r in rows} == expected
    assert len(rows) == ENTRIES  # the first firing and the one on time: none


def test_the_cause_of_each_run_is_audited(app: Celery) -> None:
    """check_runs.cause: the beat slot of a signed slot header, the event of a signed event
    header (remediation watch), nothing for a call by hand or a header not signed with our key."""
    from remediation import causes
    from remediation.settings import get_settings

    task, store = app.tasks["remediation.check.redis_job_queue"], audit(app)
    kwargs = {"target": "self", "key": f"{KEY}cause"}
    key = get_settings().signing_key.get_secret_value().encode()  # type: ignore[union-attr]
    now = time.time()
    event = causes.event_payload(
        source="docker",
        kind="die",
        resource="docker/x",
        at=now,
        sent=now,
        events=2,
        watcher="w",
        detail={"id": "abc"},
    )
    for headers, tid in [
        ({}, "cause-hand"),
        ({slots.SLOT_HEADER: slots.header(key, "sweep", now, 60)}, "cause-beat"),
        ({causes.EVENT_HEADER: causes.event_header(key, event)}, "cause-event"),
        ({causes.EVENT_HEADER: causes.event_header(b"x" * 32, event)}, "cause-forged"),
    ]:
        task.apply(kwargs=kwargs, headers=headers, task_id=tid).get()
    rows = store.query(
        "SELECT task_id, cause FROM check_runs WHERE task_id LIKE 'cause-%%' ORDER BY task_id"
    )
    got = {r["task_id"]: r["cause"] for r in rows}
    assert got["cause-hand"] is None and got["cause-forged"] is None
    assert got["cause-beat"] == {"by": "beat", "entry": "sweep", "slot": round(now)}
    assert got["cause-event"] == {"by": "event", **event}
