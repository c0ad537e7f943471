"""A worker of its own for one integration module: its own redis-server (state, results and,
on the Redis broker, the broker too) and, on RabbitMQ, a vhost slot of its own, so nothing
it does meets the shared workers or another module's keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from celery import Celery

from tests.support.env import process_env
from tests.support.processes import WorkerProcess
from tests.support.rabbitmq import Broker
from tests.support.services import RedisServer


@dataclass
class OwnWorker:
    env: dict[str, str]
    redis: RedisServer
    worker: WorkerProcess
    client: Celery


@contextmanager
def own_worker(
    broker: Broker, audit_db: str, name: str, slot: int, **extra: str
) -> Iterator[OwnWorker]:
    """Start the redis-server and the worker; stop both afterwards."""
    server = RedisServer().start()
    try:
        env = process_env(
            server,
            audit_db,
            REMEDIATION_BROKER_URL=server.url(1) if broker.kind == "redis" else broker.url(slot),
            **extra,
        )
        worker = WorkerProcess(env, name).start()
        client = Celery(
            broker=env["REMEDIATION_BROKER_URL"], backend=env["REMEDIATION_RESULT_BACKEND"]
        )
        try:
            yield OwnWorker(env, server, worker, client)
        finally:
            client.close()
            worker.stop()
    finally:
        server.stop()
