"""The real remediator, run on the miniature: its environment (its own Redis databases and audit
database, the miniature as target "demo", a signing key made now, the demo schedule of
demo.schedule), `remediation db upgrade`, the Celery worker and beat, `remediation watch`, the
scraper that the remediator looks after, and the audit queries and CLI calls the demo makes with
that environment."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

from demo.common import (
    ACTIVE_KEY,
    AUDIT_DB,
    BIN,
    CACHE_PATTERN,
    CONFIG_KEY,
    HEADERS_KEY,
    JOBS_KEY,
    MIN_DELAY,
    ROOT,
    DemoError,
    connect,
    say,
)
from demo.miniature import Miniature, Proc
from demo.schedule import SCHEDULE
from remediation.settings import DEFAULT_REQUIRE


class Remediator(Miniature):
    """The miniature plus the remediator's processes and the demo's view of its audit."""

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

    def audit_rows(self, query: str, *args: object) -> list[dict[str, Any]]:
        with connect(self.audit_dsn) as conn:
            cur = conn.execute(query, args)
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

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

    def start_remediator(self) -> None:
        """Upgrade the audit database, start worker, beat, watch and the scraper, and wait
        until the first round of checks has passed."""
        self.remediator_env = self.env()
        self.upgrade_audit()
        say(
            "approvals: the automatic fixes below (vacuum_analyze, dedupe_job_queue, rotate_proxies,"
            " restart_container) do not wait for approval by default; the demo adds flush_cache@demo"
            " (REMEDIATION_APPROVALS__REQUIRE) to approve the by-hand cache flush with the CLI"
        )
        worker = self.spawn_celery()
        sources = self.spawn_watch()
        self.spawn_scraper()
        self.wait("the worker", lambda: " ready." in worker.text())
        say(
            f"remediator: worker, beat (demo.schedule: checks every 5 s), watch ({', '.join(sources)})"
        )
        self.wait("the first proxy check", lambda: bool(self.app.scard(ACTIVE_KEY)))
        self.wait(
            "the first round of checks",
            lambda: (
                len(
                    self.audit_rows(
                        "SELECT DISTINCT check_name FROM check_runs WHERE status = 'ok'"
                    )
                )
                >= len(SCHEDULE)
            ),
        )

    def upgrade_audit(self) -> None:
        upgrade = subprocess.run(
            [str(BIN / "remediation"), "db", "upgrade"],
            env=self.remediator_env,
            cwd=self.scratch,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if upgrade.returncode != 0:
            raise DemoError(f"remediation db upgrade failed: {upgrade.stderr[-1000:]}")
        say(f"audit database {AUDIT_DB}: {upgrade.stdout.strip()}")

    def spawn_celery(self) -> Proc:
        """The worker and beat; the worker."""
        celery, env = str(BIN / "celery"), self.remediator_env
        worker = self.spawn(
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
        beat_schedule = str(self.scratch / "beat.schedule")
        self.spawn(
            "beat",
            [celery, "-A", "remediation", "beat", "--loglevel", "INFO", "-s", beat_schedule],
            env,
        )
        return worker

    def spawn_watch(self) -> list[str]:
        """`remediation watch` on Celery's events and, with a container, Docker's; its sources."""
        sources = ["celery"] + (["docker"] if self.box is not None else [])
        self.spawn(
            "watch",
            [str(BIN / "remediation"), "watch", "--id", "demo"]
            + [a for s in sources for a in ("--source", s)],
            self.remediator_env,
        )
        return sources

    def spawn_scraper(self) -> None:
        scraper_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("REMEDIATION_")},
            "PYTHONPATH": str(ROOT),
            "DEMO_CONFIG": str(self.config),
            "DEMO_REDIS_URL": self.app_url,
            "DEMO_DSN": self.app_dsn,
            "DEMO_JOBS_KEY": JOBS_KEY,
            "DEMO_ACTIVE_KEY": ACTIVE_KEY,
            "DEMO_METRICS_PORT": str(urlsplit(self.metrics_url).port),
        }
        self.spawn("scraper", [sys.executable, "-m", "demo.scraper"], scraper_env)
