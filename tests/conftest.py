"""Fixtures, one per real backend. Locally a missing service skips; in CI (CI=true) it fails."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu
import psycopg
import pytest
import redis

from remediation.clients import redis as redis_clients
from remediation.settings import get_settings
from tests.support.docker_compose import ComposeProject, compose_project
from tests.support.env import IN_CI, missing, service_env
from tests.support.http_doubles import Origin, ProxyProcess, WebhookReceiver
from tests.support.pg_cluster import Cluster, private_cluster
from tests.support.rabbitmq import mask
from tests.support.servers import Rabbit, private_postgres, private_rabbitmq
from tests.support.services import RedisServer, as_url, scratch_database


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    """The PostgreSQL server tests create scratch databases on: REMEDIATION_TEST_PG_DSN when
    set, else a private server this session starts (pytest-postgresql's executor)."""
    explicit = os.environ.get("REMEDIATION_TEST_PG_DSN")
    if explicit:
        try:
            psycopg.connect(explicit, connect_timeout=3).close()
        except psycopg.OperationalError as exc:
            missing(f"PostgreSQL at REMEDIATION_TEST_PG_DSN ({as_url(explicit)}: {exc})")
        yield explicit
        return
    with contextlib.ExitStack() as stack:
        try:
            dsn = stack.enter_context(private_postgres())
        except Exception as exc:  # any failure to start means: no PostgreSQL for these tests
            missing(f"a private PostgreSQL ({type(exc).__name__}: {exc})")
        yield dsn


@pytest.fixture(scope="session")
def rabbit() -> Iterator[Rabbit]:
    """The test RabbitMQ: REMEDIATION_TEST_AMQP_URL (and _NODE, for rabbitmqctl) when set
    ("off": the RabbitMQ tests skip), else a private node this session starts
    (pytest-rabbitmq's executor)."""
    url = os.environ.get("REMEDIATION_TEST_AMQP_URL", "")
    if url == "off":
        missing("RabbitMQ (REMEDIATION_TEST_AMQP_URL=off)")
    if url:
        try:
            with kombu.Connection(url, connect_timeout=3) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        except Exception as exc:  # any failure to connect means: no broker for these tests
            missing(f"RabbitMQ at {mask(url)} ({type(exc).__name__}: {exc})")
        yield Rabbit(url, os.environ.get("REMEDIATION_TEST_AMQP_NODE") or None)
        return
    with contextlib.ExitStack() as stack:
        try:
            node = stack.enter_context(private_rabbitmq())
        except Exception as exc:  # any failure to start means: no broker for these tests
            missing(f"a private RabbitMQ ({type(exc).__name__}: {exc})")
        yield node


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except (RuntimeError, TimeoutError) as exc:
        missing(f"redis-server ({exc})")
    yield server
    server.stop()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on the private server's db 0, emptied of test keys before each test."""
    client = redis.Redis.from_url(redis_server.url(0))
    for key in client.scan_iter(count=1000):
        client.delete(key)
    yield client
    client.close()


@pytest.fixture(scope="session")
def audit_db(pg_admin: str) -> Iterator[str]:
    with scratch_database(pg_admin, "rem_audit") as dsn:
        yield as_url(dsn)


@pytest.fixture
def target_db(pg_admin: str) -> Iterator[str]:
    with scratch_database(pg_admin, "rem_target") as dsn:
        yield as_url(dsn)


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def settings_env(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, audit_db: str
) -> Iterator[Any]:
    """Point get_settings() at the test services; returns a function to add variables."""
    for name in list(os.environ):
        if name.startswith("REMEDIATION_") and not name.startswith("REMEDIATION_TEST_"):
            monkeypatch.delenv(name)

    def apply(**extra: str) -> Any:
        for key, value in service_env(redis_server, audit_db, **extra).items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        redis_clients.reset()
        return get_settings()

    apply()
    from remediation.audit.store import AuditStore

    AuditStore(audit_db).upgrade()
    yield apply
    get_settings.cache_clear()
    redis_clients.reset()


@pytest.fixture(autouse=True)
def _reset_settings_cache() -> Iterator[None]:
    """Settings are cached per process; never let one test's environment leak into another."""
    yield
    get_settings.cache_clear()


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.stop()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start real proxies by name (tinyproxy unless kind="proxy.py"); all stopped after."""
    if not (shutil.which("tinyproxy") or Path("/usr/bin/tinyproxy").exists()):
        if IN_CI:
            pytest.fail("tinyproxy is required in CI")
        pytest.skip("tinyproxy not installed (apt-get install tinyproxy)")
    started: list[ProxyProcess] = []

    def start(name: str, **kw: Any) -> ProxyProcess:
        started.append(ProxyProcess(name, tmp_path, **kw))
        return started[-1].start()

    yield start
    for p in started:
        p.stop()


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture() -> Iterator[Cluster]:
    """A private cluster for one test module (skips locally, fails in CI, without binaries)."""
    with private_cluster() as c:
        if c is None:
            missing("PostgreSQL server binaries (initdb, pg_ctl) and runuser")
        assert c is not None
        yield c


@pytest.fixture
def project() -> Iterator[ComposeProject]:
    """A fresh compose project on the real Docker engine, its containers removed afterwards."""
    with compose_project() as p:
        yield p
