"""Celery events of the watched cluster -> celery_workers, celery_stuck_tasks, celery_queues.

Runbook 002 "Celery Worker Issues". The watched cluster is the one remediation.celery_cluster
reads: REMEDIATION_WORKERS__BROKER_URL, else this remediator's own broker. Its events are
read with Celery's own event receiver (a private, auto-deleted ``celeryev.<uuid>`` queue on
RabbitMQ, PUB/SUB on Redis: nothing is left behind, nothing is consumed from the workers):

* ``worker-offline`` (a worker stopping, or one shut down gracefully) -> celery_workers
  ("No workers running: High, start workers");
* a worker whose ``worker-heartbeat`` stopped for longer than
  REMEDIATION_WATCH__HEARTBEAT_GAP_SECONDS, and at least 1.5 of its own heartbeat intervals
  (SIGKILLed, OOM-killed, frozen, cut off; it never says offline) -> ``heartbeat_gap`` ->
  celery_workers, once per silence;
* more ``task-failed`` than REMEDIATION_WATCH__TASK_FAILURES_PER_MINUTE within a sliding
  minute -> ``task_failures`` -> celery_stuck_tasks and celery_queues. "Worker errors" has no
  check of its own; what the runbook does about it is "check for stuck jobs" and "job queue
  backup": failures in bursts are typically tasks killed by their time limit (the others of
  their kind are stuck now: celery_stuck_tasks, then revoke_stuck_tasks) or tasks failing and
  retrying while the queue grows behind them (celery_queues, then scale_workers). Both
  checks are read-only; the failure count is in the event, not the exception text (it can
  hold secrets).

Every worker sends worker-heartbeat/online/offline, with or without ``-E``; task events
only with ``-E`` or worker_send_task_events (this project's workers set it): without it,
task_failures never fires and the sweep stays the only way failures are seen.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

from celery.events.receiver import EventReceiver

from remediation.celery_cluster import CLUSTER, monitor_app
from remediation.settings import Settings
from remediation.watch.events import CATCH_UP, Closable, Event

WORKERS, STUCK, QUEUES = "celery_workers", "celery_stuck_tasks", "celery_queues"
POLL_SECONDS = 0.25
"""How long one wait for a message lasts: the close flag and the heartbeat gaps are looked
at this often."""
MAX_WORKERS = 1000
"""Workers whose last heartbeat is remembered; past it the longest silent one is forgotten."""
WINDOW_SECONDS = 60
"""The sliding minute of task_failures (counted per second: at most 60 counters)."""
CONNECT_TIMEOUT = 3.0
AMQP_HEARTBEAT = 10
"""Seconds: RabbitMQ and the source each find a silent peer within two of these (a broker
gone without closing its sockets). Redis brokers close the socket, or their workers all
fall silent and each is a heartbeat_gap."""
HEARTBEAT_FLOOR = 1.5
"""A worker is never silent before 1.5 of its own heartbeat intervals (the ``freq`` of its
heartbeats, 2 s by default), whatever the gap: a gap shorter than the interval would report
every worker between two beats."""
DEFAULT_FREQ = 2.0
MAX_CLOCK_SKEW = 60.0
"""A worker's event time further than this from ours is not believed (its clock, or forged)."""
_HOSTNAME = re.compile(r"^[\w.@:+\-]{1,255}$")
_EXCEPTION_TYPE = re.compile(r"^([A-Za-z_][\w.]{0,99})\(")


class _Receiver(EventReceiver):  # type: ignore[misc]  # celery is untyped
    """Celery's event receiver; a message it cannot read (not an event, forged) is counted
    and skipped instead of ending the stream."""

    malformed = 0

    def _receive(self, body: Any, message: Any) -> None:
        try:
            super()._receive(body, message)
        except Exception:  # anyone who can publish on the broker can send anything
            self.malformed += 1


class CelerySource(Closable):
    name = "celery"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.gap = settings.watch.heartbeat_gap_seconds
        self.failure_limit = settings.watch.task_failures_per_minute
        self._conn: Any = None
        self._receiver: _Receiver | None = None
        self._lock = threading.Lock()
        self._pending: deque[Event] = deque(maxlen=10_000)
        self._beats: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """hostname -> (monotonic time of its last event, the silence allowed it), the
        longest silent first."""
        self._failures: deque[list[int]] = deque()
        """[second, failures in it] for the last WINDOW_SECONDS seconds."""
        self._failures_fired_at: float | None = None

    # --- the Source protocol --------------------------------------------------------------

    def connect(self) -> None:
        """A connection to the watched broker and Celery's event receiver on it, or raise
        (the watcher backs off). What was known of the workers is forgotten: after a break
        their heartbeats would all look late."""
        self._release()
        self.closed.clear()
        self._beats.clear()
        self._failures.clear()
        self._failures_fired_at = None
        app = monitor_app(self.settings)
        conn = app.connection_for_read(heartbeat=AMQP_HEARTBEAT)
        try:
            conn.ensure_connection(max_retries=0, timeout=CONNECT_TIMEOUT)
            receiver = _Receiver(conn, handlers={"*": self._on_event}, app=app)
        except Exception:
            conn.release()
            raise
        receiver.connect_max_retries = 0  # its stream's connection: the watcher retries
        with self._lock:
            self._conn, self._receiver = conn, receiver

    def catch_up(self) -> list[Event]:
        now = time.time()
        params = {"target": CLUSTER}
        return [
            Event(self.name, CATCH_UP, WORKERS, "celery/workers", params, now),
            Event(self.name, CATCH_UP, QUEUES, "celery/queues", params, now),
        ]

    def events(self) -> Iterator[Event]:
        """Until close(); a dropped broker connection raises out of here."""
        with self._lock:
            receiver = self._receiver
        if receiver is None:
            return
        try:
            # What receiver.capture() does (consumer_context, drain_events), with one
            # subscription for the whole stream: capture(timeout=...) in a loop would
            # cancel and subscribe again each time and lose the events in between (Redis
            # PUB/SUB; RabbitMQ deletes the auto-delete queue with its last consumer), and
            # its wait is 1 s where close() wants POLL_SECONDS.
            with receiver.consumer_context(wakeup=False) as (stream, _channel, _consumers):
                woken = False
                while not self.closed.is_set():
                    try:
                        stream.drain_events(timeout=POLL_SECONDS)
                    except TimeoutError:  # socket.timeout: nothing arrived
                        pass
                    if not woken:
                        # Every worker sends a heartbeat now, so all are known within a
                        # second; asked only once listening (Redis subscribes in the first
                        # drain). Then the receiver's template connection can go.
                        receiver.wakeup_workers()
                        self._release()
                        woken = True
                    stream.heartbeat_check()  # AMQP: ours out, the broker's checked
                    self._check_gaps(time.monotonic())
                    while self._pending and not self.closed.is_set():
                        yield self._pending.popleft()
        finally:
            self._pending.clear()
            self._release()

    def close(self) -> None:
        """Only the flag: events() ends within POLL_SECONDS and lets its connection go
        (kombu connections are not to be shared between threads)."""
        self.closed.set()

    def _release(self) -> None:
        with self._lock:
            conn, self._conn, self._receiver = self._conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # noqa: S110 (already gone)
                pass

    def known_workers(self) -> list[str]:
        """The workers heard from since connect(), the longest silent first."""
        return list(self._beats)

    # --- events ---------------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        kind, host = event.get("type"), event.get("hostname")
        if not isinstance(host, str) or not _HOSTNAME.match(host):
            return
        now = time.monotonic()
        if kind == "worker-offline":
            self._forget(host)
            self._pending.append(self._worker_event("worker-offline", host, _when(event)))
        elif kind in ("worker-heartbeat", "worker-online"):
            self._beat(host, now, event.get("freq"))
        elif kind == "task-failed":
            self._beat(host, now)
            self._failed(event, host, now)
        elif isinstance(kind, str) and kind.startswith("task-"):
            self._beat(host, now)

    def _worker_event(self, kind: str, host: str, at: float, **detail: Any) -> Event:
        params = {"target": CLUSTER}
        return Event(
            self.name, kind, WORKERS, "celery/workers", params, at, {"hostname": host, **detail}
        )

    def _beat(self, host: str, now: float, freq: Any = None) -> None:
        """Any event of a worker shows it alive (task events come between heartbeats); a
        heartbeat also tells how often the worker beats."""
        if isinstance(freq, int | float) and not isinstance(freq, bool) and 0 < freq <= 3600:
            allowed = max(self.gap, HEARTBEAT_FLOOR * float(freq))
        elif host in self._beats:
            allowed = self._beats[host][1]
        else:
            allowed = max(self.gap, HEARTBEAT_FLOOR * DEFAULT_FREQ)
        self._beats[host] = (now, allowed)
        self._beats.move_to_end(host)
        while len(self._beats) > MAX_WORKERS:
            self._beats.popitem(last=False)

    def _forget(self, host: str) -> None:
        self._beats.pop(host, None)

    def _check_gaps(self, now: float) -> None:
        """Workers silent longer than allowed (the gap, at least 1.5 of their heartbeat
        intervals) are reported and forgotten: once per silence, the next event of theirs
        is a new start. At most MAX_WORKERS comparisons."""
        silent = [h for h, (last, allowed) in self._beats.items() if now - last > allowed]
        for host in silent:
            last, _ = self._beats.pop(host)
            self._pending.append(
                self._worker_event(
                    "heartbeat_gap", host, time.time(), silent_seconds=round(now - last, 1)
                )
            )

    def _failed(self, event: dict[str, Any], host: str, now: float) -> None:
        """Count a failure in its second; past the limit within the minute, one
        task_failures event (again at most once a minute while failures stay above it)."""
        second = int(now)
        while self._failures and self._failures[0][0] <= second - WINDOW_SECONDS:
            self._failures.popleft()
        if self._failures and self._failures[-1][0] == second:
            self._failures[-1][1] += 1
        else:
            self._failures.append([second, 1])
        count = sum(n for _, n in self._failures)
        if count <= self.failure_limit:
            return
        fired = self._failures_fired_at
        if fired is not None and now - fired < WINDOW_SECONDS:
            return
        self._failures_fired_at = now
        detail = {
            "failures": count,
            "per_seconds": WINDOW_SECONDS,
            "limit": self.failure_limit,
            "hostname": host,
            "exception": _exception_type(event.get("exception")),
        }
        params, at = {"target": CLUSTER}, _when(event)
        for check in (STUCK, QUEUES):
            resource = f"celery/{check.removeprefix('celery_')}"
            self._pending.append(
                Event(self.name, "task_failures", check, resource, params, at, detail)
            )


def _when(event: dict[str, Any]) -> float:
    """The event's own time (the worker's clock, localized by the receiver) when it is
    believable, else ours."""
    now = time.time()
    at = event.get("timestamp")
    if isinstance(at, int | float) and not isinstance(at, bool) and abs(at - now) < MAX_CLOCK_SKEW:
        return float(at)
    return now


def _exception_type(raw: Any) -> str | None:
    """The exception's type name only (its message can hold arguments, secrets)."""
    match = _EXCEPTION_TYPE.match(raw) if isinstance(raw, str) else None
    return match.group(1) if match else None
