"""The PostgreSQL probe on the test server: an under-privileged role's missing rights are
each a ✗ with the exact statement that grants them; the superuser audit database is all ✓."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from remediation.doctor import Result
from remediation.doctor import postgres as pg_probe
from tests.support.postgres import WeakRole


def _rows(rows: list[Result], target: str) -> dict[str, Result]:
    return {row.what: row for row in rows if row.target == target}


def test_weak_role_fails_with_fixes(settings_env: Callable[..., Any], weak_role: WeakRole) -> None:
    """VACUUM on a table owned by another role, ending sessions and CREATEDB are ✗ with the
    GRANT / ALTER that fixes each, needed by the actions that use them."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=weak_role.dsn)
    rows = _rows(pg_probe.probe(s), "app")
    role = f'"{weak_role.role}"'
    assert rows["connect"].status == "ok"
    vacuum = rows["VACUUM/ANALYZE on public.price_history"]
    assert vacuum.status == "fail"
    assert vacuum.fix.startswith(f'ALTER TABLE "public"."price_history" OWNER TO {role};')
    assert set(vacuum.needed_by) == {"vacuum_analyze", "analyze_tables"}
    sessions = rows["end sessions (pg_terminate_backend / pg_cancel_backend)"]
    assert sessions.status == "fail" and sessions.fix == f"GRANT pg_signal_backend TO {role};"
    createdb = rows["CREATEDB (scratch database for restores)"]
    assert createdb.status == "fail" and createdb.fix == f"ALTER ROLE {role} CREATEDB;"
    assert createdb.needed_by == ("verify_backup",)
    select = rows["SELECT on every table (pg_dump)"]
    assert select.status == "fail" and "GRANT SELECT ON" in select.fix
    assert "IntegrationPassw0rd" not in repr(rows)


def test_superuser_target_is_all_ok(settings_env: Callable[..., Any]) -> None:
    """The test stack's audit database (a superuser role) passes every PostgreSQL row."""
    rows = pg_probe.probe(settings_env())
    assert rows and {row.target for row in rows} == {"self"}
    assert [(r.what, r.detail) for r in rows if r.status != "ok"] == []
    assert any(r.what.startswith("pg_dump not older") for r in rows)


def test_unreachable_target_is_a_blocking_fail_without_password(
    settings_env: Callable[..., Any],
) -> None:
    """A target nobody answers on is a ✗ connect row whose text holds no password."""
    dsn = "postgresql://app:s3cretPassw0rd@127.0.0.1:1/app"
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=dsn, REMEDIATION_POSTGRES__CONNECT_TIMEOUT_SECONDS="2"
    )
    (row,) = [r for r in pg_probe.probe(s) if r.target == "app"]
    assert row.what == "connect" and row.status == "fail" and not row.needed_by
    assert "s3cretPassw0rd" not in repr(row)


def test_allow_listed_superuser_cannot_be_signalled(
    settings_env: Callable[..., Any], weak_role: WeakRole, pg_admin: str
) -> None:
    """With pg_signal_backend, ending sessions is ✓, but an allow-listed superuser role is a ✗:
    a non-superuser can never signal a superuser's backend."""
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(weak_role.role))
        )
        admin = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=weak_role.dsn,
        REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES=json.dumps([admin, "app"]),
    )
    rows = _rows(pg_probe.probe(s), "app")
    assert rows["end sessions (pg_terminate_backend / pg_cancel_backend)"].status == "ok"
    allowed = rows["allow-listed roles can be signalled"]
    assert (
        allowed.status == "fail"
        and admin in allowed.detail
        and "SESSION_ALLOW_ROLES" in allowed.fix
    )
