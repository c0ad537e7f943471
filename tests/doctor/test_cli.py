"""`remediation doctor` as an operator runs it, against the test stack; and the worker's run
at start, shown by `remediation status`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import redis

from remediation.guards import keys
from tests.support.base import ROOT, wait_for
from tests.support.env import process_env
from tests.support.postgres import WeakRole
from tests.support.processes import WorkerProcess
from tests.support.services import PASSWORD, RedisServer

CLI = str(Path(sys.executable).parent / "remediation")


def doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "doctor", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def stack_env(
    redis_server: RedisServer, audit_db: str, tmp_path: Path, **extra: str
) -> dict[str, str]:
    """The test services (a superuser audit database), private backup and spool folders."""
    backups, spool = tmp_path / "backups", tmp_path / "spool"
    for folder in (backups, spool):
        folder.mkdir(mode=0o700)
    return process_env(
        redis_server,
        audit_db,
        REMEDIATION_BACKUP__DIR=str(backups),
        REMEDIATION_AUDIT__SPOOL_DIR=str(spool),
        **extra,
    )


def test_doctor_all_ok_on_the_test_stack(
    redis_server: RedisServer, audit_db: str, tmp_path: Path
) -> None:
    """Exit 0, every row ✓, and --json parses with the same verdict."""
    env = stack_env(redis_server, audit_db, tmp_path)
    proc = doctor(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith(("✗", "?"))]
    assert "nothing blocking" in proc.stdout
    data = json.loads(doctor(env, "--json").stdout)
    assert data["exit_code"] == 0 and data["counts"]["fail"] == 0
    assert data["rows"] and all(row["status"] == "ok" for row in data["rows"])
    assert {row["area"] for row in data["rows"]} >= {"postgres", "folder", "schedule"}


def test_doctor_under_privileged_role_exits_1_with_fixes(
    redis_server: RedisServer, audit_db: str, tmp_path: Path, weak_role: WeakRole
) -> None:
    """A LOGIN-only target role: exit 1, each fix printed, the DSN's password nowhere."""
    env = stack_env(
        redis_server, audit_db, tmp_path, REMEDIATION_POSTGRES_TARGETS__APP=weak_role.dsn
    )
    proc = doctor(env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    role = f'"{weak_role.role}"'
    assert f"fix: GRANT pg_signal_backend TO {role};" in proc.stdout
    assert f"fix: ALTER ROLE {role} CREATEDB;" in proc.stdout
    assert f'fix: ALTER TABLE "public"."price_history" OWNER TO {role};' in proc.stdout
    assert "blocking" in proc.stdout.splitlines()[-1]
    assert PASSWORD not in proc.stdout + proc.stderr
    data = doctor(env, "--json").stdout
    assert PASSWORD not in data
    blocking = {r["what"]: r["blocking"] for r in json.loads(data)["rows"] if r["target"] == "app"}
    # no session allow-list: the session actions refuse to act, so their ✗ does not block
    assert blocking["end sessions (pg_terminate_backend / pg_cancel_backend)"] is False
    assert blocking["CREATEDB (scratch database for restores)"] is True


def test_doctor_bad_area_and_bad_configuration_exit_2(
    redis_server: RedisServer, audit_db: str, tmp_path: Path
) -> None:
    """An unknown --area and an invalid setting are usage errors: exit 2, nothing probed."""
    env = stack_env(redis_server, audit_db, tmp_path)
    proc = doctor(env, "--area", "nope")
    assert proc.returncode == 2 and "unknown area 'nope'" in proc.stderr
    proc = doctor({**env, "REMEDIATION_DOCTOR__PROBE_TIMEOUT_SECONDS": "-1"})
    assert proc.returncode == 2 and "REMEDIATION_DOCTOR__PROBE_TIMEOUT_SECONDS" in proc.stderr


def test_worker_runs_doctor_at_start_and_status_shows_it(
    redis_server: RedisServer, audit_db: str, tmp_path: Path, r: redis.Redis
) -> None:
    """A worker stores its start-up report in the state Redis; `status --json` shows it."""
    env = stack_env(redis_server, audit_db, tmp_path, REMEDIATION_DOCTOR__AT_START="true")
    worker = WorkerProcess(env, f"doctor-{uuid.uuid4().hex[:6]}").start()
    try:
        raw = wait_for(lambda: r.get(keys.DOCTOR_LAST), 60, 0.2, "doctor report in Redis")
        report: dict[str, Any] = json.loads(raw)
        assert report["exit_code"] == 0 and report["counts"]["ok"] > 0
        assert 0 < r.ttl(keys.DOCTOR_LAST) <= keys.DOCTOR_LAST_TTL
        proc = subprocess.run(
            [CLI, "--json", "status"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["doctor"]["at"] == report["at"]
        assert report["host"] == socket.gethostname()
        assert "doctor done" in worker.log()
    finally:
        worker.stop()


def test_status_shows_the_failing_rows_of_the_last_report(
    settings_env: Any, r: redis.Redis, capsys: Any
) -> None:
    """`remediation status` prints the last report's time, counts and each ✗ with its fix."""
    from remediation.cli import main
    from remediation.doctor import at_start, fail, ok, runner

    s = settings_env()
    assert main(["status"]) == 0
    assert "doctor:   no report" in capsys.readouterr().out
    rows = (
        ok("schedule", "beat_schedule", "valid"),
        fail("postgres", "app", "CREATEDB", "no", "ALTER ROLE x CREATEDB;"),
    )
    at_start.store(s, runner.Report(rows, frozenset()))
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"on {socket.gethostname()}: 1 ok, 1 failed, 0 cannot tell, 1 blocking" in out
    assert "ALTER ROLE x CREATEDB;" in out
