"""Real Celery worker processes against the test Redis and PostgreSQL, once per broker.

Every test here that uses the workers runs twice: with Redis as the broker and with
RabbitMQ (REMEDIATION_TEST_AMQP_URL, written by scripts/ensure_services.sh), except the
modules in REDIS_ONLY. Guard state and results stay in Redis either way. Each broker's run
starts from nothing: its own audit and application databases, its own webhook receiver,
and for RabbitMQ a Redis of its own and a vhost per slot (created with rabbitmqctl,
deleted at the end), so the two runs, and other test sessions, never see each other's
messages or remote-control replies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import kombu
import psycopg
import pytest
from celery import Celery
from psycopg.rows import dict_row

from remediation.testing import (
    RedisServer,
    WebhookReceiver,
    WorkerProcess,
    as_url,
    scratch_database,
    wait_for,
)
from tests.conftest import _missing, process_env

PASSWORD = "IntegrationPassw0rd"
BROKERS = ("redis", "amqp")
REDIS_ONLY = {
    "test_beat": "redbeat and its lock are the subject; the broker plays no part",
}
"""Modules that run on the Redis broker only, with the reason."""
AMQP_ONLY = {"test_rabbitmq"}
"""Modules about RabbitMQ itself."""
MAIN_SLOT = 1
"""The broker slot of the two shared workers (Redis db 1, as in service_env)."""


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


def amqp_test_url() -> str:
    """REMEDIATION_TEST_AMQP_URL when a broker answers there; skips (fails in CI) if not."""
    url = os.environ.get("REMEDIATION_TEST_AMQP_URL", "")
    if not url:
        _missing("RabbitMQ (REMEDIATION_TEST_AMQP_URL is unset; scripts/ensure_services.sh)")
    try:
        with kombu.Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    except Exception as exc:  # any failure to connect means: no broker for these tests
        _missing(f"RabbitMQ at {mask(url)} ({type(exc).__name__}: {exc})")
    return url


def mask(url: str) -> str:
    u = urlsplit(url)
    if u.password is None:
        return url
    return urlunsplit(u._replace(netloc=u.netloc.replace(f":{u.password}@", ":***@")))


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """rabbitmqctl on REMEDIATION_TEST_AMQP_NODE (its default node when unset)."""
    node = os.environ.get("REMEDIATION_TEST_AMQP_NODE")
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")


@dataclass
class Vhosts:
    """Private RabbitMQ vhosts of this session, one per slot, made on first use."""

    base_url: str
    prefix: str = field(default_factory=lambda: f"rem-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    made: dict[int, str] = field(default_factory=dict)

    def url(self, slot: int) -> str:
        if slot not in self.made:
            self.made[slot] = self._create(f"{self.prefix}-{slot}")
        u = urlsplit(self.base_url)
        return urlunsplit(u._replace(path="/" + quote(self.made[slot], safe="")))

    def _create(self, name: str) -> str:
        user = unquote(urlsplit(self.base_url).username or "guest")
        for args in (("add_vhost", name), ("set_permissions", "-p", name, user, ".*", ".*", ".*")):
            done = rabbitmqctl(*args)
            if done.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()[-500:]}")
        return name

    def delete_all(self) -> None:
        for name in self.made.values():
            rabbitmqctl("delete_vhost", name)
        self.made.clear()


def vhosts_for(url: str) -> Vhosts:
    """Vhosts on the test broker; skips (fails in CI) when rabbitmqctl cannot make them."""
    if shutil.which("rabbitmqctl") is None:
        _missing("rabbitmqctl (the RabbitMQ tests make a vhost per session with it)")
    probe = rabbitmqctl("-q", "list_vhosts", "name")
    if probe.returncode != 0:
        _missing(f"rabbitmqctl access to the test broker ({probe.stderr.strip()[-300:]})")
    for name in probe.stdout.split():  # left behind by a session that was killed
        pid = name.split("-")[2] if name.startswith("rem-test-") else ""
        if pid.isdigit() and not _running(int(pid)):
            rabbitmqctl("delete_vhost", name)
    return Vhosts(url)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@dataclass
class Broker:
    """One broker of the matrix: where workers get messages, and the Redis for the rest."""

    kind: str
    redis: RedisServer
    """Guard state (db 0) and results (db 2); the broker too (db = slot) for kind "redis"."""
    vhosts: Vhosts | None = None

    def url(self, slot: int = MAIN_SLOT) -> str:
        """The broker URL of a slot: a Redis db, or a private RabbitMQ vhost."""
        return self.redis.url(slot) if self.vhosts is None else self.vhosts.url(slot)


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Broker]:
    kind = getattr(request, "param", "redis")
    if kind == "redis":
        yield Broker("redis", redis_server)
        return
    vhosts = vhosts_for(amqp_test_url())
    state = RedisServer().start()
    try:
        yield Broker("amqp", state, vhosts)
    finally:
        vhosts.delete_all()
        state.stop()


# --- per-broker services and the two workers ----------------------------------------------


def with_password(url: str) -> str:
    """Put PASSWORD into a postgresql:// URL (trust auth ignores it; logs must not show it)."""
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':')[0]}:{PASSWORD}@{host}"


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
    app = Celery(broker=worker_env["REMEDIATION_BROKER_URL"],
                 backend=worker_env["REMEDIATION_RESULT_BACKEND"])  # fmt: skip
    yield app
    app.close()


class Audit:
    """Read the audit database the workers write to."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def rows(self, query: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def wait_rows(
        self, query: str, *params: Any, n: int = 1, timeout: float = 60
    ) -> list[dict[str, Any]]:
        return wait_for(lambda: (lambda r: r if len(r) >= n else None)(self.rows(query, *params)),
                        timeout, 0.3, f"{n} row(s) for {query!r}")  # fmt: skip

    def everything_as_text(self) -> str:
        tables = ["check_runs", "findings", "guard_decisions", "action_runs"]
        return "\n".join(
            str(r) for t in tables for r in self.rows(f"SELECT row_to_json(x)::text FROM {t} x")
        )


@pytest.fixture(scope="session")
def audit(audit_db: str, workers: list[WorkerProcess]) -> Audit:
    return Audit(audit_db)
