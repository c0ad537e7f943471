"""Real Celery worker processes against the test Redis and PostgreSQL, once per broker.

Every test here that uses the workers runs twice: with Redis as the broker and with
RabbitMQ (the session's private node, or REMEDIATION_TEST_AMQP_URL), except the
modules in REDIS_ONLY. Guard state and results stay in Redis either way. Each broker's run
starts from nothing: its own audit and application databases, its own webhook receiver,
and for RabbitMQ a Redis of its own and a vhost per slot (created with rabbitmqctl,
deleted at the end), so the two runs, and other test sessions, never see each other's
messages or remote-control replies.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery import Celery

from tests.support.audit import Audit
from tests.support.env import process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.rabbitmq import MAIN_SLOT, Broker, vhosts_for
from tests.support.services import PASSWORD, RedisServer, as_url, scratch_database, with_password

BROKERS = ("redis", "amqp")
REDIS_ONLY = {
    "test_beat": "redbeat and its lock are the subject; the broker plays no part",
}
"""Modules that run on the Redis broker only, with the reason."""
AMQP_ONLY = {"test_rabbitmq"}
"""Modules about RabbitMQ itself."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "redis_only(reason): run this integration test on the Redis broker only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that (indirectly) uses `broker` runs once per broker."""
    if "broker" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    only_redis = module in REDIS_ONLY or metafunc.definition.get_closest_marker("redis_only")
    kinds = ["redis"] if only_redis else ["amqp"] if module in AMQP_ONLY else list(BROKERS)
    metafunc.parametrize("broker", kinds, indirect=True, scope="session")


# --- RabbitMQ ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Broker]:
    kind = getattr(request, "param", "redis")
    if kind == "redis":
        yield Broker("redis", redis_server)
        return
    vhosts = vhosts_for(request.getfixturevalue("rabbit"))
    state = RedisServer().start()
    try:
        yield Broker("amqp", state, vhosts)
    finally:
        vhosts.delete_all()
        state.stop()


# --- per-broker services and the two workers ----------------------------------------------


@pytest.fixture(scope="session")
def audit_db(pg_admin: str, broker: Broker) -> Iterator[str]:
    """The audit database of one broker's run (overrides the suite-wide one)."""
    with scratch_database(pg_admin, f"rem_audit_{broker.kind}") as dsn:
        yield as_url(dsn)


@pytest.fixture(scope="session")
def webhook(broker: Broker) -> Iterator[WebhookReceiver]:
    """The webhook receiver of one broker's run (overrides the suite-wide one)."""
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def app_db(pg_admin: str, broker: Broker) -> Iterator[str]:
    """The monitored application database, reached with a password-bearing DSN."""
    with scratch_database(pg_admin, f"rem_app_{broker.kind}") as dsn:
        yield with_password(as_url(dsn))


@pytest.fixture(scope="session")
def worker_env(
    broker: Broker, audit_db: str, app_db: str, webhook: WebhookReceiver
) -> dict[str, str]:
    return process_env(
        broker.redis,
        with_password(audit_db),
        REMEDIATION_BROKER_URL=broker.url(MAIN_SLOT),
        REMEDIATION_POSTGRES_TARGETS__APP=app_db,
        REMEDIATION_POSTGRES_TARGETS__BROKEN=f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/x",
        REMEDIATION_NOTIFY__WEBHOOK_URL=webhook.url,
        REMEDIATION_BREAKER__MINIMUM_CALLS="3",
        REMEDIATION_BREAKER__WAIT_SECONDS="600",
        REMEDIATION_VERIFY__ATTEMPTS="20",
        REMEDIATION_POSTGRES__IDLE_IN_TRANSACTION_SECONDS="2",
        REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES='["rem e2e role"]',
        REMEDIATION_POSTGRES__DATA_QUALITY="[]",
        REMEDIATION_JOB_QUEUE__KEYS='["conc_queue"]',
    )


@pytest.fixture(scope="session")
def workers(worker_env: dict[str, str]) -> Iterator[list[WorkerProcess]]:
    """Two worker processes (two pool children each), like two hosts."""
    procs = [WorkerProcess(worker_env, f"w{i}") for i in (1, 2)]
    # started and stopped side by side: each takes seconds, and this happens once per broker
    with ThreadPoolExecutor(len(procs)) as pool:
        try:
            list(pool.map(WorkerProcess.start, procs))
            yield procs
        finally:
            list(pool.map(WorkerProcess.stop, procs))


@pytest.fixture(scope="session")
def client(worker_env: dict[str, str], workers: list[WorkerProcess]) -> Iterator[Celery]:
    """A plain Celery client on the same broker: sends by task name, reads results."""
    app = Celery(
        broker=worker_env["REMEDIATION_BROKER_URL"],
        backend=worker_env["REMEDIATION_RESULT_BACKEND"],
    )
    yield app
    app.close()


@pytest.fixture(scope="session")
def audit(audit_db: str, workers: list[WorkerProcess]) -> Audit:
    return Audit(audit_db)
