"""The event sources' pure logic: coalescing and rate, the lease, the signed event header, the
Docker event filter, and rechecks of deferred fixes (issue 16). No server: fakeredis."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest

from remediation import causes, rechecks
from remediation.context import Trigger
from remediation.guards import keys
from remediation.settings import Settings
from remediation.watch.coalesce import OVERFLOW, Coalescer
from remediation.watch.events import Event, bounded
from remediation.watch.lease import Lease
from remediation.watch.sources.docker import DockerSource

KEY = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ev(resource: str = "docker/a", kind: str = "die", source: str = "docker") -> Event:
    return Event(source, kind, "docker_containers", resource, {"container": resource[7:]}, 1.0)


def coalescer(clock: Clock, rate: float = 100.0, burst: int = 100, pending: int = 10) -> Coalescer:
    return Coalescer(
        interval_of=lambda e: 1.0, rate=rate, burst=burst, max_pending=pending, clock=clock
    )


def test_a_storm_on_one_resource_is_a_leading_and_one_trailing_check_per_interval() -> None:
    clock = Clock()
    c = coalescer(clock)
    fired = [c.offer(ev())]
    for _ in range(999):  # 1,000 events within 0.999 s
        clock.now += 0.001
        assert c.offer(ev()) is None
    assert c.due() == []  # the interval has not passed
    clock.now = 1001.0
    trailing = c.due()
    assert fired[0] is not None and fired[0].events == 1
    assert len(trailing) == 1 and trailing[0].events == 999
    assert c.counts[("docker", "received")] == 1000
    assert c.counts[("docker", "triggered")] == 2
    assert c.counts[("docker", "coalesced")] == 998  # the first of the trailing check is its own
    assert c.pending() == 0 and c.due() == []


def test_resources_do_not_wait_for_each_other_but_share_the_rate() -> None:
    clock = Clock()
    c = coalescer(clock, rate=1.0, burst=2)
    assert c.offer(ev("docker/a")) is not None
    assert c.offer(ev("docker/b")) is not None
    assert c.offer(ev("docker/c")) is None  # no token: waits, it is not dropped
    assert c.next_due() == pytest.approx(1001.0)
    clock.now = 1001.0
    assert [f.event.resource for f in c.due()] == ["docker/c"]


def test_past_max_pending_an_event_is_dropped_and_its_source_caught_up() -> None:
    clock = Clock()
    c = coalescer(clock, rate=0.001, burst=1, pending=2)
    assert c.offer(ev("docker/a")) is not None  # the only token
    assert c.offer(ev("docker/b")) is None
    assert c.offer(ev("docker/c")) is None
    assert c.offer(ev("docker/d")) is None  # a third waiting resource: dropped
    assert c.counts[("docker", f"dropped:{OVERFLOW}")] == 1
    assert c.overflowed == {"docker"}
    assert c.pending() == 2


def test_detail_is_bounded() -> None:
    out = bounded({f"k{i}": "x" * 1000 for i in range(100)} | {"n": None})
    assert len(out) == 16 and all(len(v) <= 200 for v in out.values())


def test_the_event_header_is_signed_bounded_and_fresh() -> None:
    now = time.time()
    payload = causes.event_payload(
        source="docker",
        kind="die",
        resource="docker/a",
        at=now,
        sent=now,
        events=3,
        watcher="h:1",
        detail={"id": "abc"},
    )
    header = causes.event_header(KEY, payload)
    assert causes.parse_event(KEY, header) == {"by": "event", **payload}
    assert causes.parse_event(b"x" * 32, header) is None  # another key
    assert causes.parse_event(KEY, {**header, "events": 4}) is None  # altered
    assert causes.parse_event(KEY, {**header, "extra": 1}) is None
    old = causes.event_header(KEY, {**payload, "sent": now - 2 * causes.MAX_AGE_SECONDS})
    assert causes.parse_event(KEY, old) is None
    big = causes.event_header(KEY, {**payload, "detail": {"x": "y" * 5000}})
    assert causes.parse_event(KEY, big) is None
    odd = causes.event_header(KEY, {**payload, "resource": "a\nb"})
    assert causes.parse_event(KEY, odd) is None


def test_one_lease_holder_at_a_time_and_a_standby_after_expiry() -> None:
    server = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    clock = Clock()
    a = Lease(server, "docker", "a", 5, clock)
    b = Lease(server, "docker", "b", 5, clock)
    assert a.refresh() and a.held()
    assert not b.refresh() and not b.held()
    clock.now += 3.9
    assert a.held()  # trusted for 80 % of the lease after the renewal
    clock.now += 0.2
    assert not a.held()
    server.delete(keys.watch_lease("docker"))  # as if it expired on the server
    assert b.refresh() and b.held()
    assert not a.refresh() and not a.held()
    b.release()
    assert a.refresh()


def test_docker_events_of_other_projects_and_actions_are_not_events(
    unit_env: Any,
) -> None:
    settings: Settings = unit_env(REMEDIATION_CONTAINERS__PROJECT="shop")
    src = DockerSource(settings)

    def raw(action: str, project: str = "shop", name: str = "shop-web-1") -> dict[str, Any]:
        attrs = {"name": name, "com.docker.compose.project": project, "exitCode": "137"}
        return {
            "Type": "container",
            "Action": action,
            "Actor": {"ID": "f" * 64, "Attributes": attrs},
            "timeNano": 1_700_000_000_123_456_789,
        }

    got = src.parse(raw("die"))
    assert got is not None and got.params == {"container": "shop-web-1"}
    assert got.resource == "docker/shop-web-1" and got.at == pytest.approx(1_700_000_000.1234568)
    assert src.parse(raw("health_status: unhealthy")) is not None
    assert src.parse(raw("oom")) is not None
    assert src.parse(raw("start")) is None
    assert src.parse(raw("health_status: healthy")) is None
    assert src.parse(raw("die", project="other")) is None
    assert src.parse(raw("die", name="../../x")) is None
    assert src.parse({"Type": "network", "Action": "die"}) is None


def test_a_deferral_sends_one_recheck_per_second_within_the_horizon() -> None:
    server = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    sent: list[tuple[str, dict[str, Any], dict[str, Any], float]] = []

    def send(name: str, kwargs: dict[str, Any], headers: dict[str, Any], later: float) -> None:
        sent.append((name, kwargs, headers, later))

    trigger = Trigger(7, "docker_containers", {"container": "a"}, "fp", "inc-1")
    now = 2_000_000_000.0
    args = (server, KEY, send, trigger, "restart_container", "docker/a")
    assert rechecks.schedule(*args, now + 3.2, now=now)
    assert not rechecks.schedule(*args, now + 3.7, now=now)  # the same second: one recheck
    assert rechecks.schedule(*args, now + 5, now=now)
    assert not rechecks.schedule(*args, now + rechecks.MAX_AHEAD_SECONDS + 1, now=now)
    assert [(n, k, round(later, 1)) for n, k, _h, later in sent] == [
        ("remediation.check.docker_containers", {"container": "a"}, 3.2),
        ("remediation.check.docker_containers", {"container": "a"}, 5.0),
    ]
    cause = causes.parse_event(KEY, sent[0][2][causes.EVENT_HEADER], now=now)
    assert cause is not None and (cause["source"], cause["kind"]) == ("worker", "deferred")
    assert cause["resource"] == "restart_container/docker/a"


class ScriptedSource:
    """A source whose streams are scripted: each connect() takes the next list of events;
    a list ending in an exception is a stream that drops."""

    name = "docker"

    def __init__(self, streams: list[list[Any]]) -> None:
        self.streams, self.connects, self.closed = streams, 0, 0

    def connect(self) -> None:
        self.connects, self.closed = self.connects + 1, 0
        if not self.streams:
            raise ConnectionError("engine down")
        self.current = self.streams.pop(0)

    def catch_up(self) -> list[Event]:
        return [Event("docker", "catch_up", "docker_containers", "docker/*", {}, 0.0)]

    def events(self) -> Any:
        for item in self.current:
            if isinstance(item, Exception):
                raise item
            yield item
        while not self.streams and self.connects < 100:  # stay connected, quietly
            time.sleep(0.01)
            if self.closed:
                return

    def close(self) -> None:
        self.closed += 1


def run_watcher(unit_env: Any, state: Any, source: ScriptedSource, seconds: float) -> list[Any]:
    from remediation.watch.core import Watcher

    settings = unit_env(
        REMEDIATION_WATCH__RECONNECT_MIN_SECONDS="0.05",
        REMEDIATION_WATCH__MIN_INTERVAL_SECONDS="0.05",
    )
    sent: list[Any] = []
    w = Watcher(settings, [source], lambda n, k, h: sent.append((n, k, h)), state, "unit")
    import threading

    threading.Timer(seconds, w.stop.set).start()
    w.run()
    return sent


def test_the_watcher_sends_catch_up_then_events_and_catches_up_after_a_drop(
    unit_env: Any, state: Any
) -> None:
    source = ScriptedSource([[ev("docker/a"), ConnectionError("dropped")], [ev("docker/b")]])
    sent = run_watcher(unit_env, state, source, 1.5)
    kinds = [
        (h[causes.EVENT_HEADER]["kind"], h[causes.EVENT_HEADER]["resource"]) for _, _, h in sent
    ]
    assert kinds[:2] == [("catch_up", "docker/*"), ("die", "docker/a")], kinds
    assert ("catch_up", "docker/*") in kinds[2:] and ("die", "docker/b") in kinds[2:], kinds
    assert source.connects == 2
    stats = state.hgetall(keys.watch_stats("docker"))
    assert int(stats[b"reconnects"]) == 1 and not state.exists(keys.watch_lease("docker"))


def test_without_the_lease_nothing_is_sent(unit_env: Any, state: Any) -> None:
    state.set(keys.watch_lease("docker"), "another", px=60_000)
    source = ScriptedSource([[ev("docker/a")]])
    assert run_watcher(unit_env, state, source, 0.8) == []
    assert source.connects == 0
