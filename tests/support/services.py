"""Real Redis and PostgreSQL for the tests and benchmarks: private redis-servers on 127.0.0.1,
scratch databases on the test PostgreSQL server, started and dropped whatever happens."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import psycopg
import redis
from psycopg import sql
from pytest_redis.executor import RedisExecutor

from tests.support.base import free_port, wait_for


@dataclass
class RedisServer:
    """A private redis-server on a random loopback port, nothing persisted; started and
    stopped by pytest-redis's RedisExecutor."""

    port: int = field(default_factory=free_port)
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rem-redis-"))
    executor: RedisExecutor | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        if self.executor is None:
            binary = shutil.which("redis-server")
            if binary is None:
                raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
            self.executor = RedisExecutor(
                binary,
                databases=16,
                redis_timeout=0,
                loglevel="warning",
                host="127.0.0.1",
                port=self.port,
                startup_timeout=30,
                appendonly=self.appendonly,
                datadir=Path(self.dir),
            )
            # no RDB snapshots; the executor has no parameter for these two
            parts = self.executor.command_parts
            self.executor.command_parts = [*parts, "--save", "", *self.fsync]
        self.executor.start()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 30, what=f"redis-server on {self.port}")
        client.close()
        return self

    appendonly: ClassVar[str] = "no"
    """Nothing survives a restart, here."""
    fsync: ClassVar[tuple[str, ...]] = ()

    def empty(self, db: int) -> None:
        """Delete every key of one database of this private server (SCAN + UNLINK)."""
        client = redis.Redis(port=self.port, db=db)
        batch: list[bytes] = []
        for key in client.scan_iter(count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
        client.close()

    def stop(self) -> None:
        if self.executor is not None and self.executor.running():
            self.executor.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class PersistentRedisServer(RedisServer):
    """A private redis-server whose data survives a crash: every write in the append-only
    file, fsync'd before the reply (as production guard state should be)."""

    appendonly: ClassVar[str] = "yes"
    fsync: ClassVar[tuple[str, ...]] = ("--appendfsync", "always")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server abruptly (SIGKILL: no shutdown save), keeping its files."""
        if self.executor is not None and self.executor.running():
            self.executor.kill(sig=sig)

    def restart(self) -> PersistentRedisServer:
        """Start it again on the same port and directory: it replays its append-only file."""
        self.kill()
        self.start()
        return self


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def with_database(dsn: str, dbname: str) -> str:
    """The same server DSN pointing at another database."""
    info = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def as_url(dsn: str) -> str:
    """A key=value DSN as a postgresql:// URL (settings require URLs)."""
    info = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}
    auth = info.get("user", "postgres") + (f":{info['password']}" if info.get("password") else "")
    host = info.get("host", "127.0.0.1")
    return f"postgresql://{auth}@{host}:{info.get('port', 5432)}/{info.get('dbname', 'postgres')}"


@contextlib.contextmanager
def scratch_database(admin_dsn: str, prefix: str = "rem_test") -> Iterator[str]:
    """Create a database, yield its DSN, drop it (with its sessions) whatever happens."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


PASSWORD = "IntegrationPassw0rd"


def with_password(url: str) -> str:
    """Put PASSWORD into a postgresql:// URL (trust auth ignores it; logs must not show it)."""
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':')[0]}:{PASSWORD}@{host}"
