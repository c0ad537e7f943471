"""Test helpers shipped with the package: real services on 127.0.0.1, started and stopped.

Used by the project's own tests and benchmarks; operators can use them to try a check
against a throwaway Redis or database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll predicate until it returns something truthy; raise TimeoutError naming what."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--logfile", "", *self.persistence()]  # fmt: skip
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


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                import json

                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0KEN/secret-path"

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class WorkerProcess:
    """A real `celery -A remediation worker` process with its own environment and log file."""

    env: dict[str, str]
    name: str
    concurrency: int = 2
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> WorkerProcess:
        cmd = [
            str(Path(_venv_bin()) / "celery"), "-A", "remediation", "worker",
            "-n", f"{self.name}@%h", "-c", str(self.concurrency), "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", *self.extra_args,
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(
                lambda: self.ready() or self._died(), timeout, 0.2, f"worker {self.name} ready"
            )
        except TimeoutError:
            self.stop()  # never leave a half-started worker behind
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.log()[-3000:]}")
        return self

    def ready(self) -> bool:
        return " ready." in self.log()

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


REDBEAT_LOCK_KEY = "rem:redbeat::lock"
"""The key the active beat holds (celery_app's redbeat_key_prefix + redbeat's ":lock")."""


@dataclass
class BeatProcess:
    """A real `celery -A remediation beat` process (redbeat): the first to take the lock in
    Redis is active, the others wait as standbys until the lock expires."""

    env: dict[str, str]
    name: str
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BeatProcess:
        """Start it without waiting: a standby says nothing until it becomes active."""
        cmd = [str(Path(_venv_bin()) / "celery"), "-A", "remediation", "beat",
               "--loglevel", "INFO", "-s", str(self.log_path.with_suffix(".schedule"))]  # fmt: skip
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def active(self) -> bool:
        """Alive and holding the redbeat lock (redbeat logs when it acquires it)."""
        return self.alive() and "beat: Acquired lock" in self.log()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group and wait for it (SIGKILL: no lock release)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def _venv_bin() -> str:
    return str(Path(sys.executable).parent)


# --- HTTP proxies and an origin, for the traffic runbooks' tests and benchmarks ----------


@dataclass
class Behaviour:
    """How the origin answers requests relayed by one proxy."""

    status: int = 200
    delay: float = 0.0
    body: bytes = b"<html>price: 10.00</html>"
    ban_after: int | None = None  # answer 403 once this many requests were served


class Origin:
    """A real HTTP server on 127.0.0.1 answering per proxy; counts requests and concurrency."""

    def __init__(self) -> None:
        self.behaviour: dict[str, Behaviour] = {}
        self.counts: Counter[str] = Counter()
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                via = self.headers.get("Via", "")
                name = self.headers.get("X-Proxy") or ("proxy.py" if "proxy.py" in via else "-")
                with origin.lock:
                    origin.counts[name] += 1
                    served = origin.counts[name]
                    origin.inflight += 1
                    origin.max_inflight = max(origin.max_inflight, origin.inflight)
                try:
                    self._answer(origin.behaviour.get(name, Behaviour()), served)
                except OSError:
                    pass  # the client gave up (timeout test)
                finally:
                    with origin.lock:
                        origin.inflight -= 1

            def _answer(self, b: Behaviour, served: int) -> None:
                time.sleep(b.delay)
                banned = b.ban_after is not None and served > b.ban_after
                self.send_response(403 if banned else b.status)
                self.send_header("Content-Length", str(len(b.body)))
                self.end_headers()
                self.wfile.write(b.body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, *args: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/product/42"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


@dataclass
class ProxyProcess:
    """A real HTTP proxy process on a free loopback port: tinyproxy or proxy.py."""

    name: str
    dir: Path
    auth: tuple[str, str] | None = None
    kind: str = "tinyproxy"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, password: str | None = None) -> str:
        if self.auth is None:
            return f"http://127.0.0.1:{self.port}"
        return f"http://{self.auth[0]}:{password or self.auth[1]}@127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "proxy.py":
            data = self.dir / f"{self.name}-data"
            return [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1",
                    "--port", str(self.port), "--num-workers", "1", "--num-acceptors", "1",
                    "--data-dir", str(data), "--log-level", "e", "--timeout", "5"]  # fmt: skip
        conf = self.dir / f"{self.name}.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 5",
                 "MaxClients 64", "DisableViaHeader Yes", f'AddHeader "X-Proxy" "{self.name}"',
                 "LogLevel Critical", f'PidFile "{self.dir / self.name}.pid"']  # fmt: skip
        if self.auth:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        conf.write_text("\n".join(lines) + "\n")
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        return [binary, "-d", "-c", str(conf)]

    def start(self) -> ProxyProcess:
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        proc = self.proc
        wait_for(lambda: listening(self.port) or proc.poll() is not None, 10, 0.02,
                 f"{self.kind} {self.name} on {self.port}")  # fmt: skip
        if proc.poll() is not None:
            raise RuntimeError(f"{self.kind} {self.name} exited with {proc.returncode}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
