"""Issue 3 procedures through real workers: a leaked transaction is ended and verified."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery
from psycopg import sql

from tests.support.audit import Audit

ROLE = "rem e2e role"
OTHER = "rem e2e other"


@pytest.fixture
def roles(pg_admin: str, app_db: str) -> Iterator[None]:
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        for role in (ROLE, OTHER):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
            ([ROLE, OTHER],),
        )
        for role in (ROLE, OTHER):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def idle_in_transaction(app_db: str, role: str) -> psycopg.Connection:
    info = psycopg.conninfo.conninfo_to_dict(app_db)
    info.update(user=role, password=None)
    conn = psycopg.connect(**{k: v for k, v in info.items() if v is not None})
    conn.execute("SELECT 1")  # psycopg opened a transaction: now idle in it
    return conn


def test_sweep_ends_the_allow_listed_leak_and_leaves_the_other(
    client: Celery, audit: Audit, app_db: str, roles: None
) -> None:
    """Sessions idle in transaction: the allow-listed one is ended, verified; the other stays."""
    leak = idle_in_transaction(app_db, ROLE)
    other = idle_in_transaction(app_db, OTHER)
    time.sleep(2.5)  # past REMEDIATION_POSTGRES__IDLE_IN_TRANSACTION_SECONDS=2
    sweep = client.send_task("remediation.check.postgres_sessions", kwargs={"target": "app"})
    assert sweep.get(timeout=60)["dispatched"] == 1
    (run,) = audit.wait_rows(
        "SELECT * FROM action_runs WHERE action = 'terminate_idle_transactions'"
        " AND target = 'app' AND outcome = 'succeeded'",
        timeout=90,
    )
    terminated = [s["usename"] for s in run["result"]["detail"]["terminated"]]
    assert terminated == [ROLE]
    with pytest.raises(psycopg.OperationalError):
        leak.execute("SELECT 1")
    # the other role's session keeps the condition alive: the fix is not verified, a human hears
    (verified,) = audit.wait_rows(
        "SELECT verification FROM action_runs WHERE id = %s AND verification IS NOT NULL",
        run["id"],
        timeout=90,
    )
    assert verified["verification"] == "not_recovered"
    assert other.execute("SELECT 1").fetchone() == (1,)  # untouched
    other.close()
