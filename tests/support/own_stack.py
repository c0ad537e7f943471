"""A worker with services of its own for one integration module: its own redis-server (guard
state, results and, on the Redis broker, the messages), its own audit database, webhook
receiver and, on RabbitMQ, a vhost of its own; so nothing it does is seen by, or depends on,
the other modules' workers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from celery import Celery

from tests.support.audit import Audit
from tests.support.env import process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.rabbitmq import Broker
from tests.support.services import RedisServer, as_url, scratch_database


@dataclass
class OwnStack:
    env: dict[str, str]
    worker: WorkerProcess
    client: Celery
    audit: Audit
    webhook: WebhookReceiver

    def run_check(self, name: str, timeout: float = 180, **kwargs: object) -> object:
        """Send a check by task name to the worker and wait for its result."""
        return self.client.send_task(f"remediation.check.{name}", kwargs=kwargs).get(
            timeout=timeout
        )


@contextlib.contextmanager
def own_stack(
    broker: Broker, pg_admin: str, name: str, slot: int, audit_dsn: str | None = None, **env: str
) -> Iterator[OwnStack]:
    """A started worker named ``name`` with ``env`` added to (or overriding) its environment;
    ``audit_dsn`` shares an audit database instead of making one."""
    with contextlib.ExitStack() as stack:
        redis = RedisServer().start()
        stack.callback(redis.stop)
        webhook = WebhookReceiver().start()
        stack.callback(webhook.stop)
        if audit_dsn is None:
            audit_dsn = as_url(
                stack.enter_context(scratch_database(pg_admin, f"rem_audit_{name}_{broker.kind}"))
            )
        broker_url = redis.url(1) if broker.kind == "redis" else broker.url(slot)
        ours = {
            "REMEDIATION_BROKER_URL": broker_url,
            "REMEDIATION_NOTIFY__WEBHOOK_URL": webhook.url,
        }
        full = process_env(redis, audit_dsn, **{**ours, **env})
        worker = WorkerProcess(full, name).start()
        stack.callback(worker.stop)
        client = Celery(broker=broker_url, backend=full["REMEDIATION_RESULT_BACKEND"])
        stack.callback(client.close)
        yield OwnStack(full, worker, client, Audit(audit_dsn), webhook)
