"""The doctor's fixtures: an under-privileged PostgreSQL role on a scratch database, a Docker
socket only root may use, a private Prometheus."""

from __future__ import annotations

import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.support.alerting import PROMETHEUS, Process, prometheus
from tests.support.env import missing
from tests.support.postgres import WeakRole
from tests.support.services import as_url, scratch_database, with_password


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


@pytest.fixture
def root_socket() -> Iterator[Path]:
    """A listening unix socket owned by root, mode 0600, in a directory anyone may enter."""
    folder = Path(tempfile.mkdtemp(prefix="rem-doctor-sock-"))
    folder.chmod(0o755)
    path = folder / "docker.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    path.chmod(0o600)
    yield path
    server.close()
    path.unlink()
    folder.rmdir()


@pytest.fixture(scope="module")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """One private Prometheus with nothing to scrape: queries are parsed and evaluated."""
    if not Path(PROMETHEUS).exists():
        missing("prometheus (apt-get install prometheus)")
    proc = prometheus(tmp_path_factory.mktemp("prometheus"), [])
    try:
        yield proc.start()
    finally:
        proc.stop()
