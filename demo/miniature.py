"""The miniature the remediator watches, and its set-up and tear-down. On the services env's
PostgreSQL and Redis (REMEDIATION_AUDIT_DSN, REMEDIATION_STATE_REDIS_URL: `make demo` sources
.data/services.env) the demo owns the databases ``remediation_demo`` (the scraper's) and
``remediation_demo_audit`` (the remediator's audit, kept at the end), and Redis databases 10-13
of the state Redis (--redis-db-base: remediator state, broker, results; the fourth is the
scraper's only when no redis-server can be started for it); a Redis database that holds keys the
demo did not write stops it before anything is done, and an advisory lock lets one demo run at a
time. The scraper's own redis-server, the shop, the proxies, the logs and scraping_config.json
live on loopback ports and in a temporary folder; a container, when Docker answers, in a compose
project of its own. Every child process runs in its own process group; `stop` undoes all of it
except the audit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import psycopg
import redis
from psycopg import sql

from demo.common import (
    APP_DB,
    AUDIT_DB,
    CACHE_MAXMEMORY,
    CONFIG_KEY,
    DB_MARK,
    IO_TIMEOUT,
    JOBS_KEY,
    LOCK_ID,
    MIN_DELAY,
    OWNER_KEY,
    PROXIES,
    REDIS_DB_BASE,
    REDIS_ROLES,
    ROWS,
    START_TIMEOUT,
    URLS,
    DemoError,
    connect,
    free_port,
    pg_url,
    redis_url,
    say,
    unlink_all,
)
from demo.container import DemoContainer
from demo.net import ProxyServer, ShopServer
from remediation.redact import redact_text


@dataclass
class Proc:
    """A child process in its own process group, output in a log file."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> Proc:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        # the group may outlive its leader (celery's pool children): end it too
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class Miniature:
    audit_admin_dsn: str
    state_url: str
    docker_url: str
    scratch: Path
    db_base: int = REDIS_DB_BASE
    procs: list[Proc] = field(default_factory=list)
    servers: list[ShopServer | ProxyServer] = field(default_factory=list)
    proxies: list[ProxyServer] = field(default_factory=list)
    results: list[tuple[str, str, float]] = field(default_factory=list)
    box: DemoContainer | None = None
    lock_conn: psycopg.Connection[Any] | None = None
    remediator_env: dict[str, str] = field(default_factory=dict)
    private_redis: bool = False
    claimed: bool = False
    created: bool = False

    def __post_init__(self) -> None:
        self.app_dsn = pg_url(self.audit_admin_dsn, APP_DB)
        self.audit_dsn = pg_url(self.audit_admin_dsn, AUDIT_DB)
        self.dbs = {name: self.db_base + i for i, name in enumerate(REDIS_ROLES)}
        self.urls = {name: redis_url(self.state_url, db) for name, db in self.dbs.items()}
        self.config = self.scratch / "scraping_config.json"
        self.app_url = self.urls["app"]
        self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        self.app = redis.Redis.from_url(self.app_url, socket_timeout=IO_TIMEOUT)

    # --- set-up ---------------------------------------------------------------------------

    @property
    def db_range(self) -> str:
        return f"{self.db_base}-{self.db_base + len(REDIS_ROLES) - 1}"

    def lock(self) -> None:
        """One demo at a time on these servers: a session advisory lock on the admin
        connection, held until the demo ends (or dies: PostgreSQL releases it then)."""
        self.lock_conn = connect(self.audit_admin_dsn)
        row = self.lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_ID,)).fetchone()
        if not row or not row[0]:
            raise DemoError("another `make demo` is running on this PostgreSQL; wait for it to end")

    def claim_redis(self) -> None:
        """Each demo Redis database is empty or the demo's (marker), all checked before any
        is touched; then the demo's leftovers are removed and the marker written."""
        clients = {}
        for name, url in self.urls.items():
            r = redis.Redis.from_url(url, socket_timeout=IO_TIMEOUT)
            try:
                size = r.dbsize()
            except redis.ResponseError as exc:
                raise DemoError(
                    f"Redis database {self.dbs[name]} is not usable: {redact_text(str(exc))}"
                ) from None
            if size and not r.exists(OWNER_KEY):
                raise DemoError(
                    f"Redis database {self.dbs[name]} holds {size} keys the demo did not write;"
                    f" the demo uses databases {self.db_range} of the state Redis and never"
                    " deletes what is not its own: choose four others with"
                    " `make demo DEMO_ARGS='--redis-db-base N'`"
                )
            clients[name] = r
        for r in clients.values():
            unlink_all(r)
            r.set(OWNER_KEY, "remediation demo")
        self.claimed = True

    def start_app_redis(self) -> str:
        """The scraper's own Redis (jobs, proxy set, page cache) with a small maxmemory, when
        redis-server is installed; "" or why not (then database 13 of the state Redis)."""
        exe = shutil.which("redis-server")
        if exe is None:
            return "redis-server is not installed"
        port = free_port()
        cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        cmd += ["no", "--maxmemory", CACHE_MAXMEMORY, "--maxmemory-policy", "noeviction"]
        self.spawn("app-redis", [*cmd, "--dir", str(self.scratch)], dict(os.environ))
        self.app_url = f"redis://127.0.0.1:{port}/0"
        self.app = redis.Redis.from_url(self.app_url, socket_timeout=IO_TIMEOUT)
        self.wait("the scraper's Redis", self._app_answers, 20)
        self.private_redis = True
        return ""

    def _app_answers(self) -> bool:
        try:
            return bool(self.app.ping())
        except redis.ConnectionError:
            return False

    def create_databases(self) -> None:
        """(Re)create the demo's two databases; one of that name the demo did not make (no
        DB_MARK comment) stops the demo before anything is dropped."""
        with connect(self.audit_admin_dsn) as conn:
            for db in (APP_DB, AUDIT_DB):
                row = conn.execute(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                    " WHERE datname = %s",
                    (db,),
                ).fetchone()
                if row is not None and row[0] != DB_MARK:
                    raise DemoError(
                        f"a database {db} exists that `make demo` did not make; drop or rename"
                        " it, or run the demo against another PostgreSQL"
                    )
            for db in (APP_DB, AUDIT_DB):
                name = sql.Identifier(db)
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
                conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(name, DB_MARK))
        self.created = True
        with connect(self.app_dsn) as conn:
            conn.execute(
                "CREATE TABLE monitored_urls (id int PRIMARY KEY, url text NOT NULL);"
                "CREATE TABLE price_history (id bigserial PRIMARY KEY,"
                " url_id int NOT NULL REFERENCES monitored_urls(id), price numeric(10,2),"
                " scraped_at timestamptz NOT NULL DEFAULT now())"
                " WITH (autovacuum_enabled = false);"
                "CREATE TABLE scrape_logs (id bigserial PRIMARY KEY, url_id int, proxy text,"
                " status int, duration_ms float8, at timestamptz NOT NULL DEFAULT now())"
            )

    def fill(self, shop: ShopServer) -> None:
        with connect(self.app_dsn) as conn:
            for i in range(1, URLS + 1):
                conn.execute(
                    "INSERT INTO monitored_urls VALUES (%s, %s)", (i, f"{shop.url}product/{i}")
                )
            conn.execute(
                "INSERT INTO price_history (url_id, price, scraped_at)"
                " SELECT 1 + g %% %s, 10 + (g %% 900) / 10.0, now() - g * interval '1 minute'"
                " FROM generate_series(1, %s) g",
                (URLS, ROWS),
            )
            conn.execute("VACUUM ANALYZE")
        now = time.time()
        jobs = [
            json.dumps({"url_id": i, "url": f"{shop.url}product/{i}", "enqueued_at": now})
            for i in range(1, URLS + 1)
        ]
        self.app.rpush(JOBS_KEY, *jobs)
        self.app.hset(CONFIG_KEY, mapping={"min_delay": str(MIN_DELAY), "concurrency": "1"})
        self.config.write_text(json.dumps({"min_delay": MIN_DELAY, "concurrency": 1}) + "\n")

    def build(self) -> str:
        """Lock, claim and set up the miniature; "" or why the scraper has no Redis of its own."""
        self.lock()
        self.claim_redis()
        no_cache = self.start_app_redis()
        self.create_databases()
        shop = ShopServer().start()
        self.servers.append(shop)
        for _ in range(PROXIES):
            p = ProxyServer(f"127.0.0.1:{shop.port}").start()
            self.servers.append(p)
            self.proxies.append(p)
        self.fill(shop)
        say(
            f"miniature: database {APP_DB} (price_history {ROWS} rows, autovacuum off;"
            f" monitored_urls, scrape_logs), job list {JOBS_KEY} ({URLS} jobs),"
            f" shop {shop.url}, {PROXIES} proxies {', '.join(p.url for p in self.proxies)},"
            f" {self.config}, scraper metrics {self.metrics_url}, scraper's Redis "
            + (
                f"{self.app_url} (maxmemory {CACHE_MAXMEMORY})"
                if self.private_redis
                else f"db {self.dbs['app']}"
            )
        )
        return no_cache

    def start_container(self) -> str:
        """The miniature's container, when Docker answers; "" or why there is none."""
        self.box, no_docker = DemoContainer.find(self.docker_url)
        if self.box is not None:
            try:
                name = self.box.start()
            except docker.errors.DockerException as exc:
                no_docker = f"the container did not start: {redact_text(str(exc))[:300]}"
                self.box.remove()
                self.box = None
            else:
                say(f"container: {name} ({self.box.image}), compose project {self.box.project}")
        return no_docker

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, cmd, env, self.scratch / f"{name}.log").start(self.scratch)
        self.procs.append(proc)
        return proc

    def wait(self, what: str, done: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            for p in self.procs:
                if not p.alive():
                    raise DemoError(f"{p.name} exited; its log: {p.log}\n{p.text()[-2000:]}")
            if time.monotonic() > deadline:
                raise DemoError(f"timed out waiting for {what}")
            time.sleep(0.5)

    # --- tear-down ------------------------------------------------------------------------

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        for s in self.servers:
            s.stop()
        if self.box is not None:
            try:
                self.box.remove()
            except docker.errors.DockerException as exc:
                say(f"could not remove the demo's container: {redact_text(str(exc))}")
        for url in self.urls.values() if self.claimed else ():
            try:
                r = redis.Redis.from_url(url, socket_timeout=IO_TIMEOUT)
                if r.exists(OWNER_KEY):
                    unlink_all(r)
            except redis.RedisError as exc:
                say(f"could not clean Redis: {redact_text(str(exc))}")
        if self.created:
            try:
                with connect(self.audit_admin_dsn) as conn:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(APP_DB)
                        )
                    )
            except psycopg.Error as exc:
                say(f"could not drop {APP_DB}: {redact_text(str(exc))}")
