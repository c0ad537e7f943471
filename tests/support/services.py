"""Real Redis and PostgreSQL for the tests and benchmarks: private redis-servers on 127.0.0.1,
scratch databases on the test PostgreSQL server, started and dropped whatever happens."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import redis
from psycopg import sql

from tests.support.base import free_port, wait_for


@dataclass
class RedisServer:
    """A private redis-server on a random loopback port, nothing persisted."""

    port: int = field(default_factory=free_port)
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rem-redis-"))
    proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        args += ["--logfile", "", *self.persistence()]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 10, what=f"redis-server on {self.port}")
        return self

    def persistence(self) -> list[str]:
        """redis-server options for what survives a restart: nothing, here."""
        return ["--save", "", "--appendonly", "no"]

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
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class PersistentRedisServer(RedisServer):
    """A private redis-server whose data survives a crash: every write in the append-only
    file, fsync'd before the reply (as production guard state should be)."""

    def persistence(self) -> list[str]:
        return ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server abruptly (SIGKILL: no shutdown save), keeping its files."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

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
