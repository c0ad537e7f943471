"""`remediation watch`: event streams in, the targeted checks out, in seconds, not sweeps.

Threads of one watcher process:

* the keeper: takes or renews each source's lease (remediation.watch.lease) a few times a
  lease; a lease lost closes that source's stream; writes the counters to the state Redis;
* one per source: while its lease is held, connect, send the source's catch-up sweep,
  then pass each event on; a dropped stream is connected again with a doubling back-off
  (REMEDIATION_WATCH__RECONNECT_*), and caught up again;
* the dispatcher (the caller's thread): events through the coalescer
  (remediation.watch.coalesce), each check sent as a Celery task with a signed event header
  (remediation.causes), only while the source's lease is held.

Events are hints: each becomes the check for the resource it names, and the check decides,
through the same guards and audit as a beat sweep. The sweep stays the safety net.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import redis
import structlog
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from remediation import causes, signing
from remediation.guards import keys
from remediation.metrics_scrape import label
from remediation.registry import CHECK_PREFIX
from remediation.settings import Settings
from remediation.watch.coalesce import Coalescer, Fire
from remediation.watch.events import CATCH_UP, Event, Source, bounded
from remediation.watch.lease import Lease

INBOX = 100_000
"""Events waiting for the dispatcher; past it they are dropped (and the source caught up)."""
STATS_EVERY = 1.0
STATS_TTL = 30 * 86400
KEEPER_TICK_MAX = 0.5
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

Send = Callable[[str, dict[str, Any], dict[str, Any]], None]
"""send(task name, kwargs, headers): publish one check task."""


def default_ident() -> str:
    return f"{causes.origin()}:{uuid.uuid4().hex[:6]}"


class Watcher:
    def __init__(
        self,
        settings: Settings,
        sources: list[Source],
        send: Send,
        state: redis.Redis,
        ident: str | None = None,
    ) -> None:
        self.settings, self.cfg = settings, settings.watch
        self.sources = {s.name: s for s in sources}
        self.send, self.state = send, state
        self.ident = ident or default_ident()
        self.log = structlog.get_logger("remediation.watch").bind(watcher=self.ident)
        self.key = signing.key_of(settings)
        self.leases = {
            name: Lease(state, name, self.ident, self.cfg.lease_seconds) for name in self.sources
        }
        self.coalescer = Coalescer(
            interval_of=self._interval,
            rate=self.cfg.max_checks_per_second,
            burst=self.cfg.burst,
            max_pending=self.cfg.max_pending,
        )
        self.inbox: queue.Queue[Event] = queue.Queue(INBOX)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()
        """(source, what): reconnects, send_failed, checks:<check>, dropped:<why> (besides the
        coalescer's received/triggered/coalesced/dropped:overflow)."""
        self._flushed: Counter[tuple[str, str]] = Counter()
        self.tick = min(self.cfg.lease_seconds / 5, KEEPER_TICK_MAX)
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "remediation_watch_event_to_send_seconds",
            "From an event's own time to its check being sent",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Collector(self))

    # --- running --------------------------------------------------------------------------

    def run(self) -> None:
        """Until stop is set (SIGTERM/SIGINT in the CLI): then streams are closed and leases
        given up, so a standby takes over at once rather than after the lease."""
        threads = [threading.Thread(target=self._keep, name="watch-keeper", daemon=True)]
        threads += [
            threading.Thread(target=self._follow, args=(s,), name=f"watch-{s.name}", daemon=True)
            for s in self.sources.values()
        ]
        for t in threads:
            t.start()
        self.log.info("watching", sources=sorted(self.sources))
        try:
            self._dispatch()
        finally:
            self.stop.set()
            for s in self.sources.values():
                _quietly(s.close)
            for t in threads:
                t.join(timeout=5)
            for lease in self.leases.values():
                lease.release()
            self._flush()
            self.log.info("stopped")

    def _interval(self, ev: Event) -> float:
        return (
            self.cfg.log_min_interval_seconds
            if ev.source == "logs"
            else self.cfg.min_interval_seconds
        )

    def _count(self, source: str, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[(source, what)] += n

    # --- leases ---------------------------------------------------------------------------

    def _keep(self) -> None:
        last_flush = 0.0
        while not self.stop.is_set():
            for name, lease in self.leases.items():
                was = lease.held()
                now = lease.refresh()
                if was and not now:
                    self.log.warning("lease lost: stopped listening", source=name)
                    _quietly(self.sources[name].close)
                elif now and not was:
                    self.log.info("lease taken: listening", source=name)
            if time.monotonic() - last_flush >= STATS_EVERY:
                self._flush()
                last_flush = time.monotonic()
            self.stop.wait(self.tick)

    # --- sources --------------------------------------------------------------------------

    def _follow(self, src: Source) -> None:
        lease = self.leases[src.name]
        delay = self.cfg.reconnect_min_seconds
        while not self.stop.is_set():
            if not lease.held():
                self.stop.wait(self.tick)
                continue
            started = time.monotonic()
            try:
                src.connect()
                # a close() that came while connecting may have been undone by connect():
                # the lease is marked lost, and stop set, before close() is called
                if self.stop.is_set() or not lease.held():
                    continue
                for ev in src.catch_up():
                    self._put(ev)
                for ev in src.events():
                    if self.stop.is_set() or not lease.held():
                        break
                    self._put(ev)
                else:
                    if not self.stop.is_set() and lease.held():
                        raise ConnectionError("the event stream ended")
            except Exception as exc:  # a dropped stream, an engine that does not answer
                if self.stop.is_set():
                    break
                self._count(src.name, "reconnects")
                self.log.warning(
                    "event stream dropped; reconnecting", source=src.name, error=repr(exc)[:300]
                )
            finally:
                _quietly(src.close)
            if time.monotonic() - started > 2 * delay:
                delay = self.cfg.reconnect_min_seconds  # it ran a while: start over
            if lease.held():
                self.stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter)
                delay = min(delay * 2, self.cfg.reconnect_max_seconds)

    def _put(self, ev: Event) -> None:
        try:
            self.inbox.put_nowait(ev)
        except queue.Full:
            self._count(ev.source, "dropped:inbox_full")
            with self.lock:
                self.coalescer.overflowed.add(ev.source)

    # --- dispatch -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                nxt = self.coalescer.next_due()
            wait = 0.5 if nxt is None else min(0.5, max(0.0, nxt - time.monotonic()))
            try:
                ev: Event | None = self.inbox.get(timeout=wait)
            except queue.Empty:
                ev = None
            fires: list[Fire] = []
            with self.lock:
                if ev is not None:
                    fire = self.coalescer.offer(ev)
                    if fire is not None:
                        fires.append(fire)
                fires += self.coalescer.due()
                overflowed, self.coalescer.overflowed = self.coalescer.overflowed, set()
            for fire in fires:
                self._send(fire)
            for name in overflowed:  # what was dropped is found by the whole sweep
                for catch in self.sources[name].catch_up():
                    self._put(catch)

    def _send(self, fire: Fire) -> None:
        ev, source = fire.event, fire.first.source
        if not self.leases[source].held():
            self._count(source, "dropped:lease_lost")
            return
        kinds = ",".join(sorted(fire.kinds))[:200]
        now = time.time()
        payload = causes.event_payload(
            source=source,
            kind=kinds,
            resource=ev.resource[:200],
            at=fire.first.at or now,
            sent=now,
            events=fire.events,
            watcher=self.ident,
            detail=bounded(ev.detail),
        )
        headers = {causes.EVENT_HEADER: causes.event_header(self.key, payload)}
        try:
            self.send(CHECK_PREFIX + ev.check, dict(ev.params), headers)
        except Exception as exc:  # the broker: the source's sweep is sent once it answers
            self._count(source, "send_failed")
            with self.lock:
                self.coalescer.overflowed.add(source)
            self.log.error("could not send a check", check=ev.check, error=repr(exc)[:300])
            self.stop.wait(self.cfg.reconnect_min_seconds)
            return
        self._count(source, f"checks:{ev.check}")
        if fire.first.at and fire.first.kind != CATCH_UP:
            self.latency.labels(label(source)).observe(max(0.0, now - fire.first.at))
        self.log.info(
            "check sent",
            source=source,
            check=ev.check,
            resource=ev.resource,
            kinds=kinds,
            events=fire.events,
        )

    # --- counters -------------------------------------------------------------------------

    def totals(self) -> Counter[tuple[str, str]]:
        with self.lock:
            return self.coalescer.counts + self.counts

    def _flush(self) -> None:
        """Add what was counted since the last flush to each source's stats hash."""
        totals = self.totals()
        delta = totals - self._flushed
        try:
            pipe = self.state.pipeline(transaction=False)
            for name, lease in self.leases.items():
                key = keys.watch_stats(name)
                for (source, what), n in delta.items():
                    if source == name and n:
                        pipe.hincrby(key, what, n)
                if lease.held():
                    pipe.hset(key, mapping={"holder": self.ident, "updated_at": time.time()})
                pipe.expire(key, STATS_TTL)
            pipe.execute()
            self._flushed = totals
        except redis.RedisError as exc:
            self.log.warning("could not write the watch counters", error=str(exc))


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:  # noqa: S110 (closing what may already be gone)
        pass


class _Collector(Collector):
    """The watcher's counters at scrape time."""

    def __init__(self, watcher: Watcher) -> None:
        self.w = watcher

    def collect(self) -> Iterator[Any]:
        events = CounterMetricFamily(
            "remediation_watch_events",
            "Events by what became of them: received, triggered (the first of a check),"
            " coalesced (merged into a check)",
            labels=["source", "outcome"],
        )
        dropped = CounterMetricFamily(
            "remediation_watch_events_dropped",
            "Events dropped, by why (overflow, inbox_full, lease_lost)",
            labels=["source", "why"],
        )
        checks = CounterMetricFamily(
            "remediation_watch_checks_sent", "Checks sent for events", labels=["source", "check"]
        )
        other = CounterMetricFamily(
            "remediation_watch_stream", "Reconnects and failed sends", labels=["source", "what"]
        )
        for (source, what), n in sorted(self.w.totals().items()):
            head, _, tail = what.partition(":")
            if what in ("received", "triggered", "coalesced"):
                events.add_metric([label(source), what], n)
            elif head == "dropped":
                dropped.add_metric([label(source), label(tail)], n)
            elif head == "checks":
                checks.add_metric([label(source), label(tail)], n)
            else:
                other.add_metric([label(source), label(what)], n)
        held = GaugeMetricFamily(
            "remediation_watch_lease_held",
            "1 while this watcher holds the source",
            labels=["source"],
        )
        for name, lease in self.w.leases.items():
            held.add_metric([label(name)], 1.0 if lease.held() else 0.0)
        yield from (events, dropped, checks, other, held)
