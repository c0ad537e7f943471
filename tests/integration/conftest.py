"""Real Celery worker processes against the test Redis and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
from tests.conftest import process_env

PASSWORD = "IntegrationPassw0rd"


def with_password(url: str) -> str:
    """Put PASSWORD into a postgresql:// URL (trust auth ignores it; logs must not show it)."""
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':')[0]}:{PASSWORD}@{host}"


@pytest.fixture(scope="session")
def app_db(pg_admin: str) -> Iterator[str]:
    """The monitored application database, reached with a password-bearing DSN."""
    with scratch_database(pg_admin, "rem_app") as dsn:
        yield with_password(as_url(dsn))


@pytest.fixture(scope="session")
def worker_env(
    redis_server: RedisServer, audit_db: str, app_db: str, webhook: WebhookReceiver
) -> dict[str, str]:
    return process_env(
        redis_server,
        with_password(audit_db),
        REMEDIATION_POSTGRES_TARGETS__APP=app_db,
        REMEDIATION_POSTGRES_TARGETS__BROKEN=f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/x",
        REMEDIATION_NOTIFY__WEBHOOK_URL=webhook.url,
        REMEDIATION_BREAKER__MINIMUM_CALLS="3",
        REMEDIATION_BREAKER__WAIT_SECONDS="600",
        REMEDIATION_VERIFY__ATTEMPTS="20",
        REMEDIATION_POSTGRES__IDLE_IN_TRANSACTION_SECONDS="2",
        REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES='["rem e2e role"]',
        REMEDIATION_POSTGRES__DATA_QUALITY="[]",
    )


@pytest.fixture(scope="session")
def workers(worker_env: dict[str, str]) -> Iterator[list[WorkerProcess]]:
    """Two worker processes (two pool children each), like two hosts."""
    procs = [WorkerProcess(worker_env, f"w{i}") for i in (1, 2)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.stop()


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
