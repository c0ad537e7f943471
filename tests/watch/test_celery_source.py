"""The Celery events source against real watched workers on a Redis of this module's own
(stopped and killed workers on a RabbitMQ vhost too):
worker-offline, heartbeat gaps of a SIGKILLed worker, task failures above the rate, close()
and a broker that goes away; then end to end: a watched worker killed -> `remediation watch`
-> a celery_workers check run on a real remediation worker, caused by the celery source."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kombu.exceptions import OperationalError

from remediation import celery_cluster
from remediation.celery_cluster import monitor_app
from remediation.watch.events import CATCH_UP, Event
from remediation.watch.sources.celery import CelerySource
from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.celery_workers import sleeping_worker
from tests.support.env import process_env
from tests.support.processes import WatchProcess, WorkerProcess
from tests.support.rabbitmq import vhosts_for
from tests.support.services import RedisServer

FAILING_DB, LIFE_DB = 3, 4
"""Watched brokers (dbs of this module's Redis): the module's worker that fails tasks; the
workers each test stops or kills."""
GAP = 3
"""REMEDIATION_WATCH__HEARTBEAT_GAP_SECONDS here (workers beat every 2 s)."""
FAILURES = 5
"""REMEDIATION_WATCH__TASK_FAILURES_PER_MINUTE here."""


@pytest.fixture(scope="module")
def watched_redis() -> Iterator[RedisServer]:
    """The watched brokers and the end-to-end test's own services, apart from other tests."""
    server = RedisServer().start()
    yield server
    server.stop()
    celery_cluster.reset()


@pytest.fixture(scope="module", params=["redis", "amqp"])
def broker_url(
    request: pytest.FixtureRequest, watched_redis: RedisServer
) -> Iterator[Callable[[int], str]]:
    """broker_url(slot): a watched broker, a db of the module's Redis, then a RabbitMQ vhost
    (on RabbitMQ task events go through a topic exchange, on Redis through PUB/SUB)."""
    if request.param == "redis":
        yield watched_redis.url
        return
    vhosts = vhosts_for(request.getfixturevalue("rabbit"))
    try:
        yield vhosts.url
    finally:
        vhosts.delete_all()


@pytest.fixture(scope="module")
def failing(
    tmp_path_factory: pytest.TempPathFactory,
    watched_redis: RedisServer,
    audit_db: str,
    broker_url: Callable[[int], str],
) -> Iterator[WorkerProcess]:
    """A watched worker (task events on, as this project's workers are) that fails tasks."""
    if broker_url(FAILING_DB) == watched_redis.url(FAILING_DB):
        watched_redis.empty(FAILING_DB)
    worker = sleeping_worker(
        tmp_path_factory.mktemp("tasks"),
        watched_redis,
        audit_db,
        "failing",
        FAILING_DB,
        broker_url=broker_url(FAILING_DB),
    )
    try:
        yield worker.start()
    finally:
        worker.stop()


@pytest.fixture
def source_on(settings_env: Any) -> Iterator[Any]:
    """source_on(url): a connected CelerySource on that watched broker, read by a thread."""
    readers: list[Reader] = []

    def make(url: str) -> Reader:
        s = settings_env(
            REMEDIATION_WORKERS__BROKER_URL=url,
            REMEDIATION_WATCH__HEARTBEAT_GAP_SECONDS=str(GAP),
            REMEDIATION_WATCH__TASK_FAILURES_PER_MINUTE=str(FAILURES),
        )
        readers.append(Reader(CelerySource(s)))
        return readers[-1]

    yield make
    for reader in readers:
        reader.stop()


class Reader:
    """Iterates source.events() in a thread, as the watcher does: what came, what ended it."""

    def __init__(self, source: CelerySource) -> None:
        self.source = source
        self.got: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self.error: BaseException | None = None
        source.connect()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.source.events():
                self.got.put(ev)
        except BaseException as exc:  # what the watcher would see
            self.error = exc

    def wait(self, kind: str, host: str = "", timeout: float = 30) -> Event:
        """The first event of kind (for a hostname starting with host) not yet taken."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.got.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if ev.kind == kind and str(ev.detail.get("hostname", "")).startswith(host):
                return ev
        raise TimeoutError(f"no {kind} event for {host or 'any worker'}; saw {self.seen}")

    def drain(self) -> list[Event]:
        while True:
            try:
                self.seen.append(self.got.get_nowait())
            except queue.Empty:
                return self.seen

    def stop(self) -> None:
        self.source.close()
        self.thread.join(10)


def a_worker(
    tmp: Path, redis_server: RedisServer, audit_db: str, name: str, url: str
) -> WorkerProcess:
    """A watched worker on the broker at url (one at a time: a Redis db is emptied first)."""
    if url == redis_server.url(LIFE_DB):
        redis_server.empty(LIFE_DB)
    return sleeping_worker(tmp, redis_server, audit_db, name, LIFE_DB, broker_url=url)


def sigkill(worker: WorkerProcess) -> None:
    """kill -9 of the worker and its pool: no worker-offline is ever sent."""
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)


def test_a_worker_stopped_is_worker_offline_and_one_sigkilled_is_one_heartbeat_gap(
    source_on: Any,
    watched_redis: RedisServer,
    audit_db: str,
    tmp_path: Path,
    broker_url: Callable[[int], str],
) -> None:
    """Two watched workers: one stopped with SIGTERM says worker-offline (one celery_workers
    event, and its silence afterwards is no gap); one SIGKILLed never says offline: once
    silent for longer than the gap it is one heartbeat_gap event, not one a second."""
    life_broker = broker_url(LIFE_DB)
    reader = source_on(life_broker)
    graceful, killed = (
        a_worker(tmp_path, watched_redis, audit_db, name, life_broker)
        for name in ("graceful", "killed")
    )
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(WorkerProcess.start, (graceful, killed)))
    try:
        wait_for(lambda: len(reader.source.known_workers()) == 2, 30, 0.2, "two workers beat")
        sigkill(killed)
        graceful.stop()
        offline = reader.wait("worker-offline", "graceful@")
        gap = reader.wait("heartbeat_gap", "killed@")
    finally:
        graceful.stop()
        killed.stop()
    for ev in (offline, gap):
        assert (ev.source, ev.check, ev.resource, ev.params) == (
            "celery",
            "celery_workers",
            "celery/workers",
            {"target": "celery"},
        )
    assert offline.at > 0 and gap.detail["silent_seconds"] >= GAP
    time.sleep(GAP)  # more polls of the gap: each silence is reported once, or not at all
    by_worker = [(e.kind, str(e.detail["hostname"]).split("@")[0]) for e in reader.drain()]
    assert sorted(k for k in by_worker if k[0] in ("heartbeat_gap", "worker-offline")) == [
        ("heartbeat_gap", "killed"),
        ("worker-offline", "graceful"),
    ]
    assert reader.error is None and reader.thread.is_alive()


def test_task_failures_above_the_rate_are_one_event_per_check(
    source_on: Any, failing: WorkerProcess, broker_url: Callable[[int], str]
) -> None:
    """FAILURES failed tasks within a minute are no event; more are one task_failures event
    for celery_stuck_tasks and one for celery_queues, with the count and the exception's
    type but not its message."""
    reader = source_on(broker_url(FAILING_DB))
    app = monitor_app(reader.source.settings)

    def fail(n: int, total: int) -> None:
        for _ in range(n):
            app.send_task("test.nap", args=[-1])  # ValueError: sleep length must be non-negative
        wait_for(lambda: failed(failing) >= total, 30, 0.2, f"{total} failed tasks")

    before = failed(failing)
    fail(FAILURES, before + FAILURES)
    time.sleep(1)  # the events of those failures reach the source
    assert not [e for e in reader.drain() if e.kind == "task_failures"]
    fail(3, before + FAILURES + 3)
    first = reader.wait("task_failures")
    time.sleep(1)
    events = [e for e in reader.drain() if e.kind == "task_failures"]
    assert sorted((e.check, e.resource) for e in events) == [
        ("celery_queues", "celery/queues"),
        ("celery_stuck_tasks", "celery/stuck_tasks"),
    ]
    assert first.detail["failures"] == FAILURES + 1
    assert first.detail["limit"] == FAILURES and first.detail["exception"] == "ValueError"
    assert "non-negative" not in str(first.detail)


def failed(worker: WorkerProcess) -> int:
    return worker.log().count("ValueError")


def test_close_ends_events_from_another_thread(
    source_on: Any, failing: WorkerProcess, broker_url: Callable[[int], str]
) -> None:
    """close() from another thread ends the iteration of events() (quietly, no error), and
    the source connects and streams again afterwards."""
    reader = source_on(broker_url(FAILING_DB))
    wait_for(lambda: reader.source.known_workers(), 30, 0.2, "a heartbeat")
    reader.source.close()
    reader.thread.join(5)
    assert not reader.thread.is_alive() and reader.error is None
    again = Reader(reader.source)
    try:
        assert again.source.catch_up()[0].kind == CATCH_UP
        wait_for(lambda: again.source.known_workers(), 30, 0.2, "a heartbeat after reconnecting")
    finally:
        again.stop()


def test_a_broker_that_goes_away_makes_events_raise(source_on: Any) -> None:
    """The watched broker stopped under a streaming source: events() raises (the watcher
    backs off and connects again); connecting to it then raises too."""
    gone = RedisServer().start()
    try:
        reader = source_on(gone.url(0))
    finally:
        gone.stop()
    reader.thread.join(30)
    assert not reader.thread.is_alive()
    assert reader.error is not None, "events() ended as if closed"
    with pytest.raises(OperationalError):
        reader.source.connect()


def test_a_killed_watched_worker_is_a_celery_workers_run_caused_by_the_celery_source(
    watched_redis: RedisServer, audit_db: str, tmp_path: Path
) -> None:
    """End to end, no beat: a remediation worker, `remediation watch --source celery` and a
    watched worker; the watched worker SIGKILLed -> a celery_workers check run whose cause is
    the celery source's heartbeat_gap, which finds no worker answering."""
    url = watched_redis.url(LIFE_DB)
    watched = a_worker(tmp_path, watched_redis, audit_db, "victim", url)
    env = process_env(
        watched_redis,
        audit_db,
        REMEDIATION_WORKERS__BROKER_URL=url,
        REMEDIATION_WATCH__HEARTBEAT_GAP_SECONDS=str(GAP),
        REMEDIATION_WATCH__SOURCES='["celery"]',
    )
    remediator = WorkerProcess(env, "remediator")
    watcher = WatchProcess(env, "watch-celery", sources=["celery"])
    audit = Audit(audit_db)
    caused = (
        "SELECT c.id, c.started_at, c.finished_at, c.cause, f.kind FROM check_runs c"
        " LEFT JOIN findings f ON f.check_run_id = c.id"
        " WHERE c.check_name = 'celery_workers' AND c.cause->>'source' = 'celery'"
        " AND c.cause->>'kind' LIKE %s AND c.started_at > to_timestamp(%s)"
        " AND c.finished_at IS NOT NULL"
    )
    started = time.time()
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(WorkerProcess.start, (watched, remediator)))
        watcher.start()
        wait_for(lambda: watcher.active("celery"), 60, 0.2, "the watcher on the celery source")
        sweep = audit.wait_rows(caused, f"%{CATCH_UP}%", started)[0]
        assert sweep["kind"] is None  # the watched worker answers: nothing found
        time.sleep(2.5)  # a heartbeat of the watched worker reaches the watcher
        killed_at = time.time()
        sigkill(watched)
        (run,) = audit.wait_rows(caused, "%heartbeat_gap%", started)
        print(
            f"kill -9 -> celery_workers run started {run['started_at'].timestamp() - killed_at:.1f}"
            f" s, finished {run['finished_at'].timestamp() - killed_at:.1f} s"
        )
        assert run["kind"] == "celery_workers_down"
        assert run["cause"]["resource"] == "celery/workers"
        assert run["cause"]["watcher"] == "watch-celery"
    finally:
        watcher.stop()
        remediator.stop()
        watched.stop()
