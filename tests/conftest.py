"""Fixtures, one per real backend. Locally a missing service skips; in CI (CI=true) it fails."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from remediation.clients import redis as redis_clients
from remediation.settings import get_settings
from remediation.testing import RedisServer, WebhookReceiver, as_url, scratch_database

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_SIGNING_KEY = "test-signing-key-" + "0123456789abcdef" * 2


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not available")


def admin_dsn() -> str:
    """The PostgreSQL server tests create scratch databases on."""
    explicit = os.environ.get("REMEDIATION_TEST_PG_DSN")
    if explicit:
        return explicit
    audit = os.environ.get("REMEDIATION_AUDIT_DSN")
    if audit:
        info = psycopg.conninfo.conninfo_to_dict(audit)
        info["dbname"] = "postgres"
        return psycopg.conninfo.make_conninfo(**info)
    return "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture(scope="session")
def pg_admin() -> str:
    dsn = admin_dsn()
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.OperationalError:
        _missing(f"PostgreSQL at {as_url(dsn)}")
    return dsn


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except (RuntimeError, TimeoutError) as exc:
        _missing(f"redis-server ({exc})")
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


def service_env(redis_server: RedisServer, audit_dsn: str, **extra: str) -> dict[str, str]:
    """REMEDIATION_* variables pointing at the test services."""
    env = {
        "REMEDIATION_STATE_REDIS_URL": redis_server.url(0),
        "REMEDIATION_BROKER_URL": redis_server.url(1),
        "REMEDIATION_RESULT_BACKEND": redis_server.url(2),
        "REMEDIATION_AUDIT_DSN": audit_dsn,
        "REMEDIATION_SIGNING_KEY": TEST_SIGNING_KEY,
        "REMEDIATION_LOG_FORMAT": "json",
        "REMEDIATION_VERIFY__DELAY_SECONDS": "0.5",
        # each test worker serves metrics on a free port from a directory of its own
        "REMEDIATION_METRICS__PORT": "0",
        "REMEDIATION_METRICS__MULTIPROC_DIR": tempfile.mkdtemp(prefix="rem-metrics-"),
    }
    env.update(extra)
    return env


def clean_environ() -> dict[str, str]:
    """This process's environment without any REMEDIATION_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATION_")}


def process_env(redis_server: RedisServer, audit_dsn: str, **extra: str) -> dict[str, str]:
    """The environment for a worker or CLI subprocess pointed at the test services."""
    return {**clean_environ(), **service_env(redis_server, audit_dsn, **extra)}


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
