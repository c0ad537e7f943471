"""celery_workers, celery_queues and celery_stuck_tasks against a real worker process on a
broker database of its own (the monitored cluster is REMEDIATION_WORKERS__BROKER_URL)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis
from pydantic import ValidationError

from remediation import celery_cluster as cw
from remediation.audit.store import AuditStore
from remediation.celery_cluster import monitor_app
from remediation.checks.celery_workers import (
    CeleryQueuesParams,
    CeleryStuckTasksParams,
    CeleryWorkersParams,
    celery_queues,
    celery_stuck_tasks,
    celery_workers,
)
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.logging import get_logger
from tests.support.base import free_port, wait_for
from tests.support.celery_workers import LINGER, SECRET, active_ids, sleeping_worker
from tests.support.processes import WorkerProcess
from tests.support.servers import Rabbit
from tests.support.services import RedisServer

BROKER_DB, EMPTY_DB = 10, 12


@pytest.fixture(scope="module")
def watched(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, audit_db: str
) -> Iterator[WorkerProcess]:
    """The monitored cluster: one worker consuming 'celery' only, on broker db 10."""
    worker = sleeping_worker(
        tmp_path_factory.mktemp("tasks"), redis_server, audit_db, "watched", BROKER_DB
    )
    try:
        yield worker.start()
    finally:
        worker.stop()
        cw.reset()


@pytest.fixture
def monitored(settings_env: Any, redis_server: RedisServer) -> Any:
    """settings_env with REMEDIATION_WORKERS__BROKER_URL on the watched worker's broker."""

    def apply(**extra: str) -> Any:
        return settings_env(
            **{"REMEDIATION_WORKERS__BROKER_URL": redis_server.url(BROKER_DB), **extra}
        )

    return apply


def ctx(s: Any, store: Any = None) -> CheckContext:
    return CheckContext(s, get_logger(), store)


def only(findings: list[Finding], kind: str) -> list[Finding]:
    return [f for f in findings if f.kind == kind]


def test_workers_answering_is_quiet_and_none_answering_is_critical(
    monitored: Any, redis_server: RedisServer, watched: WorkerProcess
) -> None:
    """With the worker up there is no finding; on a broker no worker listens to, it is
    celery_workers_down (critical); an unreachable broker is celery_broker_unreachable."""
    s = monitored()
    assert celery_workers(ctx(s), CeleryWorkersParams()) == []
    empty = monitored(REMEDIATION_WORKERS__BROKER_URL=redis_server.url(EMPTY_DB))
    (down,) = celery_workers(ctx(empty), CeleryWorkersParams())
    assert (down.kind, down.severity, down.target, down.observed) == (
        "celery_workers_down",
        Severity.CRITICAL,
        "celery",
        0,
    )
    gone = monitored(REMEDIATION_WORKERS__BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    (unreachable,) = celery_workers(ctx(gone), CeleryWorkersParams())
    assert (unreachable.kind, unreachable.severity) == ("celery_broker_unreachable", "critical")
    assert time.monotonic() - started < 15


def test_backlog_counts_priority_subqueues_and_reports_growth(
    monitored: Any, redis_server: RedisServer, audit_db: str, watched: WorkerProcess
) -> None:
    """70 messages (40 plain, 30 at priority 9) in a queue nobody consumes are a warning with
    depth 70 split by priority; past a lower high band it is high; 30 more a second later are
    celery_queue_growing; the consumed 'celery' queue stays quiet."""
    s = monitored(REMEDIATION_WORKERS__QUEUES='["celery", "reports"]')
    app = monitor_app(s)
    broker = redis.Redis.from_url(redis_server.url(BROKER_DB))
    store = AuditStore(audit_db)
    try:
        for i in range(70):
            app.send_task("test.nap", args=[0], queue="reports", priority=9 if i % 7 < 3 else None)
        assert broker.llen("reports\x06\x169") == 30
        findings = celery_queues(ctx(s, store), CeleryQueuesParams())
        (backlog,) = findings
        assert (backlog.kind, backlog.subject, backlog.severity) == (
            "celery_queue_backlog",
            "reports",
            Severity.WARNING,
        )
        assert (backlog.observed, backlog.threshold) == (70, 50)
        assert backlog.evidence["by_priority"] == {"0": 40, "3": 0, "6": 0, "9": 30}
        assert backlog.evidence["reserved_all_queues"] == 0

        time.sleep(1.1)
        for _ in range(30):
            app.send_task("test.nap", args=[0], queue="reports")
        high = monitored(
            REMEDIATION_WORKERS__QUEUES='["celery", "reports"]',
            REMEDIATION_WORKERS__BACKLOG_HIGH="90",
        )
        findings = celery_queues(ctx(high, store), CeleryQueuesParams())
        (backlog,) = only(findings, "celery_queue_backlog")
        assert (backlog.observed, backlog.severity, backlog.threshold) == (100, "high", 90)
        (growing,) = only(findings, "celery_queue_growing")
        assert growing.subject == "reports" and isinstance(growing.observed, float)
        assert growing.observed > 10 and growing.evidence["before"] == 70
    finally:
        broker.delete("reports", *(f"reports\x06\x16{p}" for p in (3, 6, 9)))
        broker.close()


def test_depth_on_an_unmeasurable_broker_is_reported_as_unsupported(monitored: Any) -> None:
    """On a broker that is neither Redis nor RabbitMQ (SQS here) the queue check says it
    cannot measure depth (info), nothing else; a target other than 'celery' is rejected."""
    s = monitored(REMEDIATION_WORKERS__BROKER_URL="sqs://")
    (info,) = celery_queues(ctx(s), CeleryQueuesParams())
    assert (info.kind, info.severity, info.observed) == (
        "celery_queue_depth_unsupported",
        "info",
        "sqs",
    )
    with pytest.raises(ValidationError, match="REMEDIATION_WORKERS__BROKER_URL"):
        CeleryQueuesParams(target="app")


@pytest.fixture
def amqp_queue(rabbit: Rabbit) -> Iterator[tuple[str, str]]:
    """(RabbitMQ URL, a queue name of this test's own); the queue is deleted afterwards."""
    url = rabbit.url
    name = f"rem-depth-{uuid.uuid4().hex[:10]}"
    yield url, name
    with kombu.Connection(url) as conn:
        conn.default_channel.queue_delete(name)


def test_backlog_on_rabbitmq_gives_the_same_findings_as_on_redis(
    monitored: Any, audit_db: str, amqp_queue: tuple[str, str]
) -> None:
    """70 messages in a RabbitMQ queue nobody consumes are a warning with depth 70 (a passive
    declare); 30 more a second later are high past a band of 90 and celery_queue_growing;
    a queue that does not exist is empty and is not created by looking."""
    url, queue = amqp_queue
    missing = f"{queue}-never-declared"
    queues = json.dumps([queue, missing])
    s = monitored(REMEDIATION_WORKERS__BROKER_URL=url, REMEDIATION_WORKERS__QUEUES=queues)
    app = monitor_app(s)
    store = AuditStore(audit_db)
    for i in range(70):
        app.send_task("test.nap", args=[0], queue=queue, priority=9 if i % 7 < 3 else None)
    (backlog,) = celery_queues(ctx(s, store), CeleryQueuesParams())
    assert (backlog.kind, backlog.subject, backlog.severity) == (
        "celery_queue_backlog",
        queue,
        Severity.WARNING,
    )
    assert (backlog.observed, backlog.threshold) == (70, 50)
    assert backlog.evidence["by_priority"] == {"all": 70}
    assert backlog.evidence["reserved_all_queues"] is None

    time.sleep(1.1)
    for _ in range(30):
        app.send_task("test.nap", args=[0], queue=queue)
    high = monitored(
        REMEDIATION_WORKERS__BROKER_URL=url,
        REMEDIATION_WORKERS__QUEUES=queues,
        REMEDIATION_WORKERS__BACKLOG_HIGH="90",
    )
    findings = celery_queues(ctx(high, store), CeleryQueuesParams())
    (backlog,) = only(findings, "celery_queue_backlog")
    assert (backlog.observed, backlog.severity, backlog.threshold) == (100, "high", 90)
    (growing,) = only(findings, "celery_queue_growing")
    assert growing.subject == queue and growing.evidence["before"] == 70
    assert cw.amqp_depths(monitor_app(high), [missing]) == {missing: 0}
    with kombu.Connection(url) as conn, pytest.raises(conn.channel_errors, match="NOT_FOUND"):
        conn.default_channel.queue_declare(missing, passive=True)  # looking created nothing


def test_a_task_running_past_its_expected_time_is_stuck_without_its_arguments(
    monitored: Any, watched: WorkerProcess
) -> None:
    """test.sleep_for expected in 0.2 s (factor 1) is reported with id, name, worker and
    runtime, never its password argument; test.nap (default 300 s expected) is not."""
    s = monitored(
        REMEDIATION_WORKERS__EXPECTED_SECONDS='{"test.sleep_for": 0.2}',
        REMEDIATION_WORKERS__STUCK_FACTOR="1",
    )
    app = monitor_app(s)
    slow = app.send_task("test.sleep_for", args=[3], kwargs={"password": SECRET})
    nap = app.send_task("test.nap", args=[3])

    def both_active() -> bool:
        active = app.control.inspect(timeout=1).active() or {}
        return {slow.id, nap.id} <= {t["id"] for ts in active.values() for t in ts}

    wait_for(both_active, 15, 0.2, "both tasks active")
    time.sleep(0.5)
    (stuck,) = celery_stuck_tasks(ctx(s), CeleryStuckTasksParams())
    assert (stuck.kind, stuck.severity, stuck.subject) == ("celery_task_stuck", "high", slow.id)
    assert stuck.evidence["name"] == "test.sleep_for"
    assert stuck.evidence["worker"].startswith("watched@")
    assert 0.2 < stuck.evidence["runtime_seconds"] < 10
    assert SECRET not in json.dumps(stuck.model_dump(mode="json"))
    assert "args" not in stuck.evidence and "kwargs" not in stuck.evidence


def test_the_remediators_own_tasks_are_never_reported_stuck(
    monitored: Any, watched: WorkerProcess
) -> None:
    """A remediation.act.* task running past its expected time beside a genuinely stuck
    test.sleep_for on the same worker: only test.sleep_for is reported."""
    s = monitored(
        REMEDIATION_WORKERS__EXPECTED_SECONDS=json.dumps({"test.sleep_for": 0.2, LINGER: 0.2}),
        REMEDIATION_WORKERS__STUCK_FACTOR="1",
    )
    app = monitor_app(s)
    own = app.send_task(LINGER, args=[20])
    slow = app.send_task("test.sleep_for", args=[20])
    try:
        wait_for(lambda: {own.id, slow.id} <= active_ids(app), 15, 0.2, "both tasks active")
        time.sleep(0.5)
        (stuck,) = celery_stuck_tasks(ctx(s), CeleryStuckTasksParams())
        assert (stuck.subject, stuck.evidence["name"]) == (slow.id, "test.sleep_for")
        assert own.id in active_ids(app)  # it runs on, past its expected 0.2 s, unreported
        assert [t["name"] for t in cw.stuck_tasks(app, s)[1]] == ["test.sleep_for"]
    finally:
        app.control.revoke([own.id, slow.id], terminate=True, signal="SIGTERM")
        wait_for(lambda: not {own.id, slow.id} & active_ids(app), 15, 0.2, "tasks ended")
