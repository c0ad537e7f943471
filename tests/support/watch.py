"""A real worker, real `remediation watch` processes and a compose project on the real Docker
engine, for the event-source tests and benchmarks (issue 16)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from psycopg.rows import dict_row

from remediation.guards import keys
from tests.support.base import wait_for
from tests.support.docker_compose import DOCKER_URL, ComposeProject, compose_project
from tests.support.env import process_env
from tests.support.processes import WatchProcess, WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database

SERVE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
CRASH = ["sh", "-c", "sleep 0.2; exit 1"]
LEASE_SECONDS = 3


def docker_env(redis_server: RedisServer, audit: str, project: str, **extra: str) -> dict[str, str]:
    """A worker's and a watcher's environment: the project's containers restarted at once
    (a back-off of one second), verified right away, no
    hourly budget or blast cap in the way of a benchmark's many kills; override per test."""
    values = {
        "REMEDIATION_CONTAINERS__DOCKER_URL": DOCKER_URL,
        "REMEDIATION_CONTAINERS__PROJECT": project,
        "REMEDIATION_CONTAINERS__RESTART_BACKOFF_BASE_SECONDS": "1",
        "REMEDIATION_CONTAINERS__RESTART_BACKOFF_MAX_SECONDS": "1",
        "REMEDIATION_CONTAINERS__FLAP_MAX_RESTARTS": "1000",
        "REMEDIATION_GUARDS__FLAP_MAX_RUNS": "1000",
        "REMEDIATION_GUARDS__BUDGET_OVERRIDES": json.dumps({"restart_container": 10_000}),
        "REMEDIATION_GUARDS__BLAST_RADIUS": json.dumps(
            {"restart_container": {"units": 10_000, "window_seconds": 600}}
        ),
        "REMEDIATION_VERIFY__DELAY_SECONDS": "0.2",
        "REMEDIATION_POSTGRES__DATA_QUALITY": "[]",
        "REMEDIATION_WATCH__SOURCES": '["docker"]',
        "REMEDIATION_WATCH__LEASE_SECONDS": str(LEASE_SECONDS),
        **extra,
    }
    return process_env(redis_server, audit, **values)


@dataclass
class DockerStack:
    env: dict[str, str]
    audit: str
    project: ComposeProject
    worker: WorkerProcess
    state: redis.Redis
    watchers: list[WatchProcess] = field(default_factory=list)

    def watcher(self, name: str, wait: bool = True, **env: str) -> WatchProcess:
        w = WatchProcess({**self.env, **env}, name, sources=["docker"]).start()
        self.watchers.append(w)
        if wait:
            wait_for(lambda: w.active("docker") or not w.alive(), 30, 0.05, f"{name} listening")
            assert w.alive(), w.log()[-3000:]
        return w

    def caught_up(self, watcher: str, timeout: float = 30) -> None:
        """Wait for the watcher's catch-up sweep to be done (a kill before it ends may be
        found by the sweep rather than by its event)."""
        sql = (
            "SELECT count(*) AS n FROM check_runs WHERE cause->>'kind' = 'catch_up'"
            " AND cause->>'watcher' = %s AND status <> 'running'"
        )
        wait_for(lambda: self.rows(sql, watcher)[0]["n"] > 0, timeout, 0.05, f"{watcher} caught up")

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.audit, row_factory=dict_row) as conn:
            return conn.execute(sql, args).fetchall()

    def restarts(self, name: str) -> list[dict[str, Any]]:
        """restart_container runs on the container, oldest first, with the check run that
        found it (its cause) and the verification."""
        return self.rows(
            "SELECT a.outcome, a.verification, extract(epoch FROM a.verified_at) AS verified,"
            " extract(epoch FROM a.started_at) AS started, c.cause, c.params,"
            " extract(epoch FROM d.decided_at) AS decided, extract(epoch FROM c.started_at)"
            " AS checked FROM action_runs a JOIN findings f ON f.id = a.finding_id"
            " JOIN guard_decisions d ON d.id = a.decision_id"
            " JOIN check_runs c ON c.id = f.check_run_id"
            " WHERE a.action = 'restart_container' AND a.resource = %s ORDER BY a.started_at",
            f"docker/{name}",
        )

    def verified_after(self, name: str, since: float, timeout: float = 60) -> dict[str, Any]:
        """The first restart of the container started after since, once verified."""

        def found() -> dict[str, Any] | None:
            for row in self.restarts(name):
                if float(row["started"]) >= since and row["verification"] is not None:
                    return row
            return None

        wait_for(lambda: found() is not None, timeout, 0.02, f"{name} restarted and verified")
        row = found()
        assert row is not None
        return row

    def stats(self, source: str = "docker") -> dict[str, int]:
        raw = self.state.hgetall(keys.watch_stats(source))
        return {k.decode(): int(v) for k, v in raw.items() if v.decode().lstrip("-").isdigit()}

    def kill(self, container: Any) -> float:
        """docker kill; the time just before it (what the fault-to-fix time starts from)."""
        at = time.time()
        container.kill()
        return at

    def stop(self) -> None:
        for w in self.watchers:
            w.stop()
        self.worker.stop()


@contextmanager
def docker_stack(pg_admin: str, name: str = "watch", **extra: str) -> Iterator[DockerStack]:
    """Private Redis and audit database, a compose project, a worker; watchers on demand."""
    with ExitStack() as stack:
        server = RedisServer().start()
        stack.callback(server.stop)
        audit = as_url(stack.enter_context(scratch_database(pg_admin, f"rem_{name}")))
        project = stack.enter_context(compose_project())
        env = docker_env(server, audit, project.name, **extra)
        worker = WorkerProcess(env, name, concurrency=2).start()
        made = DockerStack(env, audit, project, worker, redis.Redis.from_url(server.url(0)))
        stack.callback(made.stop)
        yield made
