"""One real Runner (real Redis guard state, real audit PostgreSQL) for the fuzz tests.

Global dry-run is on, so no action ever acts; but every schema-valid call goes through its
action's resolve step first, against real services configured here (a PostgreSQL target
with tables, a Redis target with job lists, a Docker engine, folders), so the resolve code
sees fuzzed input: case variants of configured names, names that do not exist, hostile
strings. A kwarg that slipped through would still only be audited.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from tests.support.fuzz import RESULTS, TABLES, Fuzz, fuzz_env
from tests.support.services import RedisServer, as_url, scratch_database


@pytest.fixture(scope="session")
def fuzz_services(pg_admin: str) -> Iterator[tuple[str, RedisServer, str]]:
    """A target database with three tables, a Redis with job lists, a folder."""
    cache = RedisServer().start()
    client = redis.Redis.from_url(cache.url(0))
    client.rpush("job_queue", "a", "a")
    client.rpush("fuzz:a", "a")
    client.set("fuzz:b", "not a list")
    folder = tempfile.mkdtemp(prefix="rem-fuzz-")
    with scratch_database(pg_admin, "rem_fuzz") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in TABLES:
                conn.execute(f'CREATE TABLE "{table}" (id int)')
        yield as_url(dsn), cache, folder
    client.close()
    cache.stop()


@pytest.fixture
def fuzz(
    settings_env: Any, r: redis.Redis, fuzz_services: tuple[str, RedisServer, str]
) -> Iterator[Fuzz]:
    """A Runner on the test Redis (emptied first) and audit database, dry-run on."""
    db, cache, folder = fuzz_services
    settings = settings_env(**fuzz_env(db, cache.url(0), folder))
    assert settings.guards.dry_run
    yield Fuzz(settings, r)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write("fuzz cases per action (form: outcome counts)")
    for (action, form), counts in sorted(RESULTS.items()):
        detail = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        write(f"  {action:30} {form:8} {sum(counts.values()):5}  {detail}")
