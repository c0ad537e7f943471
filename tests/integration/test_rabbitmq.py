"""RabbitMQ itself: the amqp run of the matrix really goes through it, and pausing and
resuming a queue's consumers (Celery remote control) works there as on Redis."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import kombu
import pytest

from remediation.actions.pauses import (
    PauseLowPriorityParams,
    ResumeLowPriorityParams,
    pause_low_priority,
    resume_low_priority,
)
from remediation.celery_app import get_app
from remediation.celery_cluster import amqp_depths
from remediation.context import ActionContext
from remediation.logging import get_logger
from tests.support.base import wait_for
from tests.support.env import process_env
from tests.support.processes import WorkerProcess
from tests.support.rabbitmq import MAIN_SLOT, Broker

LOWPRIO_SLOT = 5
"""A vhost of its own for the worker that consumes celery and low_priority."""
LINGER_SLOT = 6
"""A vhost of its own for the worker whose old connection lingers."""


def consumers_of(url: str, queue: str) -> int:
    with kombu.Connection(url) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).consumer_count)


def test_the_amqp_run_consumes_from_rabbitmq_in_a_vhost_of_its_own(
    broker: Broker, worker_env: dict[str, str], workers: list[WorkerProcess]
) -> None:
    """Both shared workers consume 'celery' in this session's private vhost on RabbitMQ,
    while guard state and results stay on Redis."""
    url = worker_env["REMEDIATION_BROKER_URL"]
    assert broker.kind == "amqp" and url == broker.url(MAIN_SLOT)
    assert url.startswith("amqp://") and url.rsplit("/", 1)[1].startswith("rem-test-")
    assert consumers_of(url, "celery") == 2
    assert worker_env["REMEDIATION_STATE_REDIS_URL"].startswith("redis://")
    assert worker_env["REMEDIATION_RESULT_BACKEND"].startswith("redis://")


@pytest.fixture(scope="module")
def lowprio_worker(broker: Broker, audit_db: str) -> Iterator[WorkerProcess]:
    """One worker consuming celery and low_priority, in a vhost of its own."""
    env = process_env(broker.redis, audit_db, REMEDIATION_BROKER_URL=broker.url(LOWPRIO_SLOT))
    worker = WorkerProcess(env, "lowprio", concurrency=1, extra_args=["-Q", "celery,low_priority"])
    try:
        yield worker.start()
    finally:
        worker.stop()


def queues_of(app: Any, worker: str | None = None) -> dict[str, list[str]]:
    inspect = app.control.inspect(timeout=2, destination=[worker] if worker else None)
    return {w: sorted(q["name"] for q in qs) for w, qs in (inspect.active_queues() or {}).items()}


def send(app: Any, queue: str) -> Any:
    return app.send_task(
        "remediation.check.redis_job_queue", kwargs={"target": "self"}, queue=queue
    )


def test_pause_and_resume_low_priority_on_rabbitmq(
    settings_env: Any, broker: Broker, lowprio_worker: WorkerProcess
) -> None:
    """After pause_low_priority a low_priority task waits in its RabbitMQ queue (depth 1)
    while a celery task runs; resume_low_priority brings the consumer back and it runs."""
    s = settings_env(
        REMEDIATION_STATE_REDIS_URL=broker.redis.url(0),
        REMEDIATION_BROKER_URL=broker.url(LOWPRIO_SLOT),
        REMEDIATION_RESULT_BACKEND=broker.redis.url(2),
    )
    get_app.cache_clear()
    app = get_app()
    act = ActionContext(s, get_logger())
    try:
        (name,) = wait_for(lambda: list(queues_of(app)), 20, 0.3, "worker answers inspect")
        assert queues_of(app, name) == {name: ["celery", "low_priority"]}

        paused = pause_low_priority(act, PauseLowPriorityParams())
        assert paused.ok and paused.detail["confirmed"] == [name]
        assert queues_of(app, name) == {name: ["celery"]}
        waiting = send(app, "low_priority")
        assert send(app, "celery").get(timeout=30)["status"] == "ok"
        assert not waiting.ready()
        assert amqp_depths(app, ["low_priority"]) == {"low_priority": 1}

        resumed = resume_low_priority(act, ResumeLowPriorityParams(force=True))
        assert resumed.ok and resumed.detail["acknowledged"] == [name]
        assert waiting.get(timeout=30)["status"] == "ok"
        assert queues_of(app, name) == {name: ["celery", "low_priority"]}
        assert amqp_depths(app, ["low_priority"]) == {"low_priority": 0}
    finally:
        get_app.cache_clear()


def test_a_worker_whose_old_connection_lingers_reconnects_and_stays_up(
    settings_env: Any, broker: Broker, audit_db: str
) -> None:
    """A worker back from a partition finds RabbitMQ still holding its old connection (until
    that one's heartbeat times out) and on it the worker's remote-control queue: it declares
    the queue again, starts and answers remote control (an exclusive queue: the worker
    exited with RESOURCE_LOCKED)."""
    url = broker.url(LINGER_SLOT)
    settings_env(
        REMEDIATION_STATE_REDIS_URL=broker.redis.url(0),
        REMEDIATION_BROKER_URL=url,
        REMEDIATION_RESULT_BACKEND=broker.redis.url(2),
    )
    get_app.cache_clear()
    app = get_app()
    name = f"linger@{socket.gethostname()}"
    env = process_env(broker.redis, audit_db, REMEDIATION_BROKER_URL=url)
    worker = WorkerProcess(env, "linger", concurrency=1)
    try:
        with kombu.Connection(url) as old:  # the connection the partition left behind
            app.control.mailbox(old).Node(name, channel=old.default_channel).listen()
            worker.start()
            answers = wait_for(lambda: app.control.ping([name], timeout=1), 20, 0.3, "ping")
            assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-2000:]
        assert "RESOURCE_LOCKED" not in worker.log()
        assert [next(iter(a)) for a in answers] == [name]
    finally:
        worker.stop()
        get_app.cache_clear()
