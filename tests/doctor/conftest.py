"""The doctor's fixtures: an under-privileged PostgreSQL role on a scratch database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from tests.support.services import as_url, scratch_database, with_password


@dataclass(frozen=True)
class WeakRole:
    role: str
    dsn: str  # a postgresql:// URL as this role, with a password (trust auth ignores it)
    table: str  # schema.table it does not own


@pytest.fixture
def weak_role(pg_admin: str) -> Iterator[WeakRole]:
    """A LOGIN-only role (no CREATEDB, no pg_signal_backend, owns nothing) on a scratch
    database holding public.price_history, owned by the admin role; all dropped after."""
    role = f"doctor_weak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with scratch_database(pg_admin, "rem_doctor") as admin_dsn:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE public.price_history (id int, price numeric)")
            url = as_url(admin_dsn)
            user = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[0]
            weak = with_password(url.replace(f"://{user}", f"://{role}", 1))
            yield WeakRole(role, weak, "public.price_history")
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
