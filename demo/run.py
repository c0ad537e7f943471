"""`python -m demo` (make demo): the price-monitoring scraper of runbook 001 in miniature,
watched by the real remediator, broken one fault at a time.

It needs the PostgreSQL and Redis of the services env (`make demo` sources
.data/services.env: REMEDIATION_AUDIT_DSN, REMEDIATION_STATE_REDIS_URL) and owns, there:
the databases ``remediation_demo`` (the scraper's) and ``remediation_demo_audit`` (the
remediator's audit), and Redis databases 10-13 of the state Redis (--redis-db-base: remediator
state, broker, results; the fourth is the scraper's only when no redis-server can be started for it). A Redis
database that holds keys the demo did not write stops it before anything is done. The
scraper's own redis-server, the shop, the proxies, the logs and scraping_config.json live on
loopback ports and in a temporary folder; a container, when Docker answers, in a compose
project of its own.
Exit 0 when every injected fault was remediated and verified, 1 when one was not, 2 when the
demo could not start."""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import docker
import psycopg
import redis
from psycopg import sql

from demo.container import DemoContainer
from demo.net import ProxyServer, ShopServer
from demo.schedule import SCHEDULE
from remediation.errors import ConfigError
from remediation.redact import redact_text
from remediation.settings import DEFAULT_REQUIRE, load_settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
APP_DB = "remediation_demo"
AUDIT_DB = "remediation_demo_audit"
REDIS_DB_BASE = 10
REDIS_ROLES = ("state", "broker", "result", "app")
"""The Redis databases the demo uses, from --redis-db-base on, in this order."""
LOCK_ID = 0x6465_6D6F  # "demo"
"""The advisory lock one running demo holds."""
OWNER_KEY = "remediation-demo:owner"
"""Marks a Redis database as the demo's (written at start, deleted at the end)."""
JOBS_KEY = "demo:jobs"
CACHE_PATTERN = "demo:cache:*"
CACHE_MAXMEMORY = "32mb"
"""The private cache Redis's maxmemory (the shared one's configuration is never changed)."""
ACTIVE_KEY = "demo:proxies:active"
CONFIG_KEY = "demo:scraping:config"
HEADERS_KEY = "demo:scraping:headers"
URLS = 10
"""Monitored product pages (one job each in the job list)."""
PROXIES = 3
MIN_DELAY = 0.25
"""The scraper's pause between requests before any ban (scraping_config.json min_delay)."""
ROWS = 20_000
"""price_history rows before the bloat."""
FAULT_TIMEOUT = 90.0
"""Seconds the remediator has to fix and verify one fault."""
SETTLE_SECONDS = 5.0
"""After the fix, how long the other actions the finding sent get to show up."""
START_TIMEOUT = 90.0
IO_TIMEOUT = 10
"""Seconds for one database or Redis round trip of the demo itself."""


class DemoError(Exception):
    """The demo cannot start (its message says why and what to do)."""


def say(text: str) -> None:
    print(text, flush=True)


def _redis_url(base: str, db: int) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("redis", "rediss"):
        raise DemoError("REMEDIATION_STATE_REDIS_URL must be a redis:// URL for the demo")
    return urlunsplit(parts._replace(path=f"/{db}"))


def _pg_url(base: str, dbname: str) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("postgresql", "postgres"):
        raise DemoError("REMEDIATION_AUDIT_DSN must be a postgresql:// URL for the demo")
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=IO_TIMEOUT)


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
class Demo:
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
        self.app_dsn = _pg_url(self.audit_admin_dsn, APP_DB)
        self.audit_dsn = _pg_url(self.audit_admin_dsn, AUDIT_DB)
        self.dbs = {name: self.db_base + i for i, name in enumerate(REDIS_ROLES)}
        self.urls = {name: _redis_url(self.state_url, db) for name, db in self.dbs.items()}
        self.config = self.scratch / "scraping_config.json"
        self.app_url = self.urls["app"]
        self.metrics_url = f"http://127.0.0.1:{_free_port()}/metrics"
        self.app = redis.Redis.from_url(self.app_url, socket_timeout=IO_TIMEOUT)

    # --- set-up ---------------------------------------------------------------------------

    @property
    def db_range(self) -> str:
        return f"{self.db_base}-{self.db_base + len(REDIS_ROLES) - 1}"

    def lock(self) -> None:
        """One demo at a time on these servers: a session advisory lock on the admin
        connection, held until the demo ends (or dies: PostgreSQL releases it then)."""
        self.lock_conn = _connect(self.audit_admin_dsn)
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
            _unlink_all(r)
            r.set(OWNER_KEY, "remediation demo")
        self.claimed = True

    def start_app_redis(self) -> str:
        """The scraper's own Redis (jobs, proxy set, page cache) with a small maxmemory, when
        redis-server is installed; "" or why not (then database 13 of the state Redis)."""
        exe = shutil.which("redis-server")
        if exe is None:
            return "redis-server is not installed"
        port = _free_port()
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
        with _connect(self.audit_admin_dsn) as conn:
            for db in (APP_DB, AUDIT_DB):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        self.created = True
        with _connect(self.app_dsn) as conn:
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
        with _connect(self.app_dsn) as conn:
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

    def env(self) -> dict[str, str]:
        """The remediator's environment: its own Redis databases and audit, the miniature as
        target "demo", a signing key made now, the demo schedule."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATION_")}
        metrics = self.scratch / "metrics"
        metrics.mkdir(exist_ok=True)
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "REMEDIATION_STATE_REDIS_URL": self.urls["state"],
                "REMEDIATION_BROKER_URL": self.urls["broker"],
                "REMEDIATION_RESULT_BACKEND": self.urls["result"],
                "REMEDIATION_AUDIT_DSN": self.audit_dsn,
                "REMEDIATION_SIGNING_KEY": secrets.token_hex(32),
                "REMEDIATION_LOG_FORMAT": "json",
                "REMEDIATION_SCHEDULE_MODULE": "demo.schedule",
                "REMEDIATION_POSTGRES_TARGETS": json.dumps({"demo": self.app_dsn}),
                "REMEDIATION_REDIS_TARGETS": json.dumps({"demo": self.app_url}),
                "REMEDIATION_CACHE__FLUSH_PATTERNS": json.dumps([CACHE_PATTERN]),
                "REMEDIATION_APPROVALS__REQUIRE": json.dumps(
                    [*DEFAULT_REQUIRE, "flush_cache@demo"]
                ),
                "REMEDIATION_VERIFY__DELAY_SECONDS": "1",
                "REMEDIATION_METRICS__PORT": "0",
                "REMEDIATION_METRICS__MULTIPROC_DIR": str(metrics),
                "REMEDIATION_CELERY__BEAT_MAX_LOOP_INTERVAL": "1",
                "REMEDIATION_CELERY__REDBEAT_LOCK_TIMEOUT": "10",
                "REMEDIATION_JOB_QUEUE__KEY": JOBS_KEY,
                "REMEDIATION_JOB_QUEUE__ID_FIELD": "url_id",
                "REMEDIATION_JOB_QUEUE__DEAD_LETTER_KEY": JOBS_KEY + ":dead_letter",
                "REMEDIATION_PROXIES__PROXY_LIST": json.dumps([p.url for p in self.proxies]),
                "REMEDIATION_PROXIES__TEST_URL": self.servers[0].url + "product/1",
                "REMEDIATION_PROXIES__REDIS_TARGET": "demo",
                "REMEDIATION_PROXIES__ACTIVE_KEY": ACTIVE_KEY,
                "REMEDIATION_PROXIES__TIMEOUT_SECONDS": "3",
                "REMEDIATION_PROXIES__MIN_ACTIVE": "2",
                "REMEDIATION_BACKOFF__REDIS_TARGET": "demo",
                "REMEDIATION_BACKOFF__CONFIG_KEY": CONFIG_KEY,
                "REMEDIATION_BACKOFF__MIRROR_FILE": str(self.config),
                "REMEDIATION_BACKOFF__FLOOR_SECONDS": str(MIN_DELAY),
                "REMEDIATION_HEADERS__REDIS_TARGET": "demo",
                "REMEDIATION_HEADERS__KEY": HEADERS_KEY,
                "REMEDIATION_WATCH__SOURCES": json.dumps(["celery", "docker"]),
            }
        )
        if self.box is not None:
            env["REMEDIATION_CONTAINERS__PROJECT"] = self.box.project
            env["REMEDIATION_CONTAINERS__DOCKER_URL"] = self.docker_url
        return env

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, cmd, env, self.scratch / f"{name}.log").start(self.scratch)
        self.procs.append(proc)
        return proc

    def audit_rows(self, query: str, *args: object) -> list[dict[str, Any]]:
        with _connect(self.audit_dsn) as conn:
            cur = conn.execute(query, args)
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def wait(self, what: str, done: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            for p in self.procs:
                if not p.alive():
                    raise DemoError(f"{p.name} exited; its log: {p.log}\n{p.text()[-2000:]}")
            if time.monotonic() > deadline:
                raise DemoError(f"timed out waiting for {what}")
            time.sleep(0.5)

    # --- faults ---------------------------------------------------------------------------

    def fault(self, what: str, action: str, inject: Callable[[], None]) -> bool:
        """Break, then follow the audit: finding, guard decision, action run, verification."""
        started = time.monotonic()
        since = self.audit_rows("SELECT now() AS t")[0]["t"]
        say(f"\nBREAK: {what}")
        inject()
        verdict = self.follow(since, started, action, set(), verified=True)
        if verdict is None:
            say(f"FAILED: {what}: no verified {action} within {FAULT_TIMEOUT:.0f} s")
        self.results.append((what, verdict or "FAILED", _since(started)))
        return verdict == "recovered"

    def follow(
        self, since: Any, started: float, action: str, shown: set[tuple[str, int]], verified: bool
    ) -> str | None:
        """Print what the audit records from since on, until action ran (verified: until its
        verification is recorded); its outcome or verification, None on timeout. Then, for
        a few seconds, the other actions the same findings sent."""
        verdict = None
        while verdict is None and time.monotonic() - started < FAULT_TIMEOUT:
            verdict = self.show_new(since, started, action, shown, verified)
            if verdict is None:
                time.sleep(0.5)
        settle = time.monotonic() + SETTLE_SECONDS
        while verdict is not None and time.monotonic() < settle and self.unfinished(since):
            time.sleep(0.5)
            self.show_new(since, started, "", shown, verified)
        return verdict

    def unfinished(self, since: Any) -> bool:
        """An admitted decision since then whose action run is not recorded yet."""
        return bool(
            self.audit_rows(
                "SELECT 1 FROM guard_decisions d WHERE d.decided_at >= %s"
                " AND d.decision = 'admitted' AND d.action <> 'notify'"
                " AND NOT EXISTS (SELECT 1 FROM action_runs r WHERE r.decision_id = d.id)",
                since,
            )
        )

    def show_new(
        self, since: Any, started: float, action: str, shown: set[tuple[str, int]], verified: bool
    ) -> str | None:
        """Print the audit rows since then not shown yet; action's outcome or verification
        (verified) once recorded, else None."""
        verdict = None
        for row in self.audit_rows(
            "SELECT d.id, d.action, d.decision, d.guard, d.reason, f.id AS finding,"
            " f.kind, f.summary, c.cause->>'by' AS by,"
            " coalesce(c.cause->>'entry', (c.cause->>'source') || ' ' || (c.cause->>'kind'))"
            " AS via FROM guard_decisions d LEFT JOIN findings f ON f.id = d.finding_id"
            " LEFT JOIN check_runs c ON c.id = f.check_run_id"
            " WHERE d.decided_at >= %s ORDER BY d.id",
            since,
        ):
            if row["finding"] is not None and ("f", row["finding"]) not in shown:
                shown.add(("f", row["finding"]))
                say(f"FOUND: {row['kind']}: {row['summary']} (by {row['by']}: {row['via']})")
            if ("d", row["id"]) not in shown:
                shown.add(("d", row["id"]))
                why = f" ({row['guard']}: {row['reason']})" if row["guard"] else ""
                say(f"DECIDED: {row['action']} {row['decision']}{why}")
        for row in self.audit_rows(
            "SELECT id, action, outcome, error, result, verification FROM action_runs"
            " WHERE started_at >= %s ORDER BY id",
            since,
        ):
            if ("r", row["id"]) not in shown:
                shown.add(("r", row["id"]))
                summary = (row["result"] or {}).get("summary") or row["error"] or ""
                say(f"DID: {row['action']} {row['outcome']}: {summary}")
                if row["action"] == action and not verified and verdict is None:
                    verdict = str(row["outcome"])
            if row["verification"] and ("v", row["id"]) not in shown:
                shown.add(("v", row["id"]))
                if row["action"] == action and verified and verdict is None:
                    say(
                        f"VERIFIED: {row['action']} {row['verification']}"
                        f" ({time.monotonic() - started:.1f} s)"
                    )
                    verdict = str(row["verification"])
                else:
                    say(f"  (also verified: {row['action']} {row['verification']})")
        return verdict

    def cache_fault(self) -> bool:
        """Fill the scraper's page cache: the remediator finds it and notifies; flush_cache is
        by hand only (README), so the operator sends it, approves it, and checks again."""
        what = f"fill the scraper's page cache {CACHE_PATTERN} to 93 % of maxmemory (redis_cache)"
        started = time.monotonic()
        since = self.audit_rows("SELECT now() AS t")[0]["t"]
        say(f"\nBREAK: {what}")
        self.fill_cache()
        shown: set[tuple[str, int]] = set()
        if self.follow(since, started, "notify", shown, verified=False) is None:
            say(f"FAILED: {what}: no finding notified within {FAULT_TIMEOUT:.0f} s")
            self.results.append((what, "FAILED", _since(started)))
            return False
        kwargs = json.dumps({"target": "demo"})
        say(
            "BY HAND: flush_cache runs by hand only (a full LRU cache is normal); the demo"
            " requires approval for it (REMEDIATION_APPROVALS__REQUIRE=...flush_cache@demo):\n"
            f"  celery -A remediation call remediation.act.flush_cache --kwargs '{kwargs}'"
        )
        self.cli(
            [
                "celery",
                "-A",
                "remediation",
                "call",
                "remediation.act.flush_cache",
                "--kwargs",
                kwargs,
            ]
        )
        approval = self.pending_approval("flush_cache", started)
        if approval is None:
            say("FAILED: no pending approval for flush_cache")
            self.results.append((what, "FAILED", _since(started)))
            return False
        say(f"PENDING: approval {approval['id']}: {approval['plan'].get('summary', '')}")
        say(f"  remediation approve {approval['id']}")
        approved = self.cli(["remediation", "approve", approval["id"], "--reason", "make demo"])
        say(f"APPROVED: {approved.strip()}")
        if self.follow(since, started, "flush_cache", shown, verified=False) != "succeeded":
            say("FAILED: flush_cache did not succeed")
            self.results.append((what, "FAILED", _since(started)))
            return False
        say(f"  remediation run redis_cache --kwargs '{kwargs}'")
        found = json.loads(
            self.cli(
                ["remediation", "--json", "run", "redis_cache", "--kwargs", kwargs], check=False
            )
        ).get("findings", [])
        high = [f for f in found if f.get("kind") == "redis_memory_high"]
        verdict = "not_recovered" if high else "recovered"
        say(
            f"VERIFIED: redis_cache (manual check run, audited) {verdict}:"
            f" {len(found)} finding(s) ({time.monotonic() - started:.1f} s)"
        )
        self.results.append((what, verdict, _since(started)))
        return verdict == "recovered"

    def cli(self, cmd: list[str], check: bool = True) -> str:
        """A remediation or celery command with the remediator's environment; its output."""
        done = subprocess.run(
            [str(BIN / cmd[0]), *cmd[1:]],
            env=self.remediator_env,
            cwd=self.scratch,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise DemoError(
                f"{' '.join(cmd[:4])} failed: {done.stdout[-500:]}{done.stderr[-1000:]}"
            )
        return done.stdout

    def pending_approval(self, action: str, started: float) -> dict[str, Any] | None:
        while time.monotonic() - started < FAULT_TIMEOUT:
            for a in json.loads(self.cli(["remediation", "--json", "approvals"])):
                if a.get("action") == action and a.get("state") == "pending":
                    return dict(a)
            time.sleep(0.5)
        return None

    def fill_cache(self) -> None:
        limit = int(str(self.app.config_get("maxmemory")["maxmemory"]))
        pipe, n = self.app.pipeline(transaction=False), 0
        while int(self.app.info("memory")["used_memory"]) < limit * 0.93:
            for _ in range(100):
                pipe.set(f"demo:cache:page:{n}", secrets.token_hex(4096))
                n += 1
            pipe.execute()

    def scraper_view(self) -> str:
        """What the scraper went through, from its /metrics: 403s seen, its pacing."""
        time.sleep(2)  # a round or two at the new pace
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.metrics_url, timeout=IO_TIMEOUT) as resp:
                text = resp.read(1 << 20).decode()
        except OSError as exc:
            return f"its metrics did not answer ({type(exc).__name__})"
        by_status = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^scraper_requests_total\{status="(\d+)"\} (\S+)$', text, re.M)
        }
        delay = re.search(r"^scraper_min_delay_seconds (\S+)$", text, re.M)
        return (
            f"{by_status.get('403', 0):.0f} of {sum(by_status.values()):.0f} requests so far"
            f" answered 403; min_delay {float(delay.group(1)) if delay else '?'} s, read from"
            f" {self.config.name} (tune_backoff doubled it) ({self.metrics_url})"
        )

    def bloat(self) -> None:
        with _connect(self.app_dsn) as conn:
            conn.execute("UPDATE price_history SET price = price + 0.01")

    def duplicate_jobs(self) -> None:
        job = json.dumps(
            {"url_id": 1, "url": self.servers[0].url + "product/1", "enqueued_at": time.time()},
            sort_keys=True,
        )
        self.app.rpush(JOBS_KEY, *[job] * 30)

    def ban_proxy(self) -> None:
        self.proxies[1].banned = True

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
                    _unlink_all(r)
            except redis.RedisError as exc:
                say(f"could not clean Redis: {redact_text(str(exc))}")
        if self.created:
            try:
                with _connect(self.audit_admin_dsn) as conn:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(APP_DB)
                        )
                    )
            except psycopg.Error as exc:
                say(f"could not drop {APP_DB}: {redact_text(str(exc))}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unlink_all(r: redis.Redis) -> None:
    """Delete every key of a database the demo owns, in batches (never FLUSHDB)."""
    batch: list[bytes] = []
    for key in r.scan_iter(count=500):
        batch.append(key)
        if len(batch) >= 500:
            r.unlink(*batch)
            batch = []
    if batch:
        r.unlink(*batch)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


@contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does: through the clean-up."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--redis-db-base",
        type=int,
        choices=range(0, 13),
        default=REDIS_DB_BASE,
        metavar="N",
        help=f"the demo's Redis databases are N to N+3 of the state Redis (default {REDIS_DB_BASE})",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        settings = load_settings()
    except ConfigError as exc:
        say(f"demo: {redact_text(str(exc))}")
        return 2
    audit = settings.audit_dsn.get_secret_value()
    state = settings.state_redis_url.get_secret_value()
    scratch = Path(tempfile.mkdtemp(prefix="remediation-demo-"))
    demo: Demo | None = None
    code = 2
    try:
        with _terminated_as_interrupt():
            demo = Demo(audit, state, settings.containers.docker_url, scratch, args.redis_db_base)
            code = _run(demo)
    except (
        DemoError,
        redis.RedisError,
        psycopg.Error,
        docker.errors.DockerException,
        OSError,
    ) as exc:
        say(f"demo: {redact_text(str(exc))}")
    except KeyboardInterrupt:
        say("\ndemo: interrupted")
        code = 130
    finally:
        if demo is not None and demo.claimed:
            say("\nStopping worker, beat, watch, scraper, proxies and the shop...")
            demo.stop()
            say(
                f"Removed the database {APP_DB} and the demo's Redis keys (databases {demo.db_range})."
                f" Kept the audit database {AUDIT_DB} for `remediation history` / `report`:\n"
                f"  REMEDIATION_AUDIT_DSN={redact_text(demo.audit_dsn)} .venv/bin/remediation"
                f" history\n  remove it with: psql -c 'DROP DATABASE {AUDIT_DB}' (or the next"
                " `make demo` replaces it)"
            )
            say(f"Logs kept in {scratch} (rm -r {scratch} removes them).")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        if demo is not None and demo.lock_conn is not None:
            demo.lock_conn.close()  # the next demo may start
        say(f"Total run time: {time.monotonic() - started:.0f} s")
    return code


def _run(demo: Demo) -> int:
    say("== make demo: a price-monitoring scraper (runbook 001) in miniature ==")
    demo.lock()
    demo.claim_redis()
    no_cache = demo.start_app_redis()
    demo.create_databases()
    shop = ShopServer().start()
    demo.servers.append(shop)
    for _ in range(PROXIES):
        p = ProxyServer(f"127.0.0.1:{shop.port}").start()
        demo.servers.append(p)
        demo.proxies.append(p)
    demo.fill(shop)
    say(
        f"miniature: database {APP_DB} (price_history {ROWS} rows, autovacuum off;"
        f" monitored_urls, scrape_logs), job list {JOBS_KEY} ({URLS} jobs),"
        f" shop {shop.url}, {PROXIES} proxies {', '.join(p.url for p in demo.proxies)},"
        f" {demo.config}, scraper metrics {demo.metrics_url}, scraper's Redis "
        + (
            f"{demo.app_url} (maxmemory {CACHE_MAXMEMORY})"
            if demo.private_redis
            else f"db {demo.dbs['app']}"
        )
    )
    demo.box, no_docker = DemoContainer.find(demo.docker_url)
    if demo.box is not None:
        try:
            name = demo.box.start()
        except docker.errors.DockerException as exc:
            no_docker = f"the container did not start: {redact_text(str(exc))[:300]}"
            demo.box.remove()
            demo.box = None
        else:
            say(f"container: {name} ({demo.box.image}), compose project {demo.box.project}")
    env = demo.remediator_env = demo.env()
    upgrade = subprocess.run(
        [str(BIN / "remediation"), "db", "upgrade"],
        env=env,
        cwd=demo.scratch,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if upgrade.returncode != 0:
        raise DemoError(f"remediation db upgrade failed: {upgrade.stderr[-1000:]}")
    say(f"audit database {AUDIT_DB}: {upgrade.stdout.strip()}")
    say(
        "approvals: the automatic fixes below (vacuum_analyze, dedupe_job_queue, rotate_proxies,"
        " restart_container) do not wait for approval by default; the demo adds flush_cache@demo"
        " (REMEDIATION_APPROVALS__REQUIRE) to approve the by-hand cache flush with the CLI"
    )
    celery = str(BIN / "celery")
    worker = demo.spawn(
        "worker",
        [
            celery,
            "-A",
            "remediation",
            "worker",
            "-n",
            "demo@%h",
            "-c",
            "2",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ],
        env,
    )
    demo.spawn(
        "beat",
        [
            celery,
            "-A",
            "remediation",
            "beat",
            "--loglevel",
            "INFO",
            "-s",
            str(demo.scratch / "beat.schedule"),
        ],
        env,
    )
    sources = ["celery"] + (["docker"] if demo.box is not None else [])
    demo.spawn(
        "watch",
        [str(BIN / "remediation"), "watch", "--id", "demo"]
        + [a for s in sources for a in ("--source", s)],
        env,
    )
    scraper_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REMEDIATION_")},
        "PYTHONPATH": str(ROOT),
        "DEMO_CONFIG": str(demo.config),
        "DEMO_REDIS_URL": demo.app_url,
        "DEMO_DSN": demo.app_dsn,
        "DEMO_JOBS_KEY": JOBS_KEY,
        "DEMO_ACTIVE_KEY": ACTIVE_KEY,
        "DEMO_METRICS_PORT": str(urlsplit(demo.metrics_url).port),
    }
    demo.spawn("scraper", [sys.executable, "-m", "demo.scraper"], scraper_env)
    demo.wait("the worker", lambda: " ready." in worker.text())
    say(f"remediator: worker, beat (demo.schedule: checks every 5 s), watch ({', '.join(sources)})")
    demo.wait("the first proxy check", lambda: bool(demo.app.scard(ACTIVE_KEY)))
    demo.wait(
        "the first round of checks",
        lambda: (
            len(demo.audit_rows("SELECT DISTINCT check_name FROM check_runs WHERE status = 'ok'"))
            >= len(SCHEDULE)
        ),
    )
    say("scraper: scraping through the active proxy set; every check passes. Breaking things:")
    ok = demo.fault(
        "bloat price_history: every row updated, autovacuum off (postgres_dead_tuples)",
        "vacuum_analyze",
        demo.bloat,
    )
    ok &= demo.fault(
        f"stall the job list {JOBS_KEY} with 30 duplicate jobs (redis_job_queue)",
        "dedupe_job_queue",
        demo.duplicate_jobs,
    )
    ok &= demo.fault(
        f"ban proxy {demo.proxies[1].url}: it answers 403 (proxy_pool_health)",
        "rotate_proxies",
        demo.ban_proxy,
    )
    say(f"scraper: {demo.scraper_view()}")
    if demo.private_redis:
        ok &= demo.cache_fault()
    else:
        say(f"\nSKIP: fill the cache: {no_cache} (the shared Redis's maxmemory is not changed)")
    if demo.box is not None:
        ok &= demo.fault(
            f"kill container {demo.box.container.name} (docker_containers; watch's Docker events)",
            "restart_container",
            demo.box.kill,
        )
    else:
        say(f"\nSKIP: kill a container: {no_docker}")
    say("\n== remediation report ==")
    report = subprocess.run(
        [str(BIN / "remediation"), "report", "--since", "1h"],
        env=env,
        cwd=demo.scratch,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    say(report.stdout.rstrip() or report.stderr.rstrip())
    say("\n== summary ==")
    for what, verdict, seconds in demo.results:
        say(f"  {verdict:>13}  {seconds:5.1f} s  {what}")
    say("ALL FAULTS REMEDIATED AND VERIFIED" if ok else "FAILED: not every fault was fixed")
    return 0 if ok else 1
