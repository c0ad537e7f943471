"""`python -m demo` (make demo) end to end on the test services: every fault remediated and
verified, the report printed, nothing left running or left behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import psycopg
import pytest
import redis

from tests.support.base import ROOT
from tests.support.env import process_env
from tests.support.services import RedisServer

DEMO_TIMEOUT = 360
DEMO_DBS = (10, 11, 12, 13)
PORTS = re.compile(r"(?:http|redis)://127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A Redis of this module's own: the session's shared one holds other tests' keys in the
    databases the demo uses (10-13), which the demo rightly refuses to touch."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def process_cwds() -> list[tuple[int, str]]:
    """(pid, working directory) of every process this user may look at (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((int(entry.name), os.readlink(entry / "cwd")))
            except OSError:  # gone, or another user's
                continue
    return found


def assert_nothing_left(out: str, redis_server: RedisServer, audit_db: str) -> None:
    """No process in the demo's folder, no port it served, no key in its Redis databases,
    no container of its compose project, no scraper database; the audit kept."""
    scratch = re.search(r"Logs kept in (\S+) ", out)
    assert scratch, out
    left = [pid for pid, cwd in process_cwds() if cwd == scratch.group(1)]
    assert not left, f"still running in {scratch.group(1)}: {left}"
    for port in PORTS.findall(out.split("\nBREAK: ")[0]):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still open"
    for db in DEMO_DBS:
        assert redis.Redis.from_url(redis_server.url(db)).dbsize() == 0, f"keys left in db {db}"
    project = re.search(r"compose project (remediation-demo-\w+)", out)
    if project:
        dc = docker.DockerClient(timeout=30)
        label = f"com.docker.compose.project={project.group(1)}"
        assert not dc.containers.list(all=True, filters={"label": label})
    assert "remediation_demo" not in databases(audit_db)
    assert "remediation_demo_audit" in databases(audit_db)  # kept for `remediation history`
    shutil.rmtree(scratch.group(1))  # the logs the demo keeps for the operator


def run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )


def docker_answers() -> bool:
    try:
        return bool(docker.DockerClient(timeout=10).ping())
    except docker.errors.DockerException:
        return False


def databases(audit_db: str) -> set[str]:
    with psycopg.connect(audit_db, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


def test_demo_remediates_every_fault_and_stops_everything(
    redis_server: RedisServer, audit_db: str
) -> None:
    """The demo exits 0, each BREAK is followed by a recovered VERIFIED, the report is
    printed, and no child process, port, Redis key or scraper database is left."""
    started = time.monotonic()
    done = run_demo(process_env(redis_server, audit_db))
    took = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr[-3000:]}"
    blocks = out.split("\nBREAK: ")[1:]
    skipped = re.findall(r"^SKIP: ", out, re.MULTILINE)
    assert len(blocks) >= 3 and len(blocks) + len(skipped) == 5, out
    if docker_answers() and shutil.which("redis-server"):
        assert not skipped, out  # everything a fault needs is here: all five must run
    for block in blocks:
        head = block.splitlines()[0]
        verified = [line for line in block.splitlines() if line.startswith("VERIFIED: ")]
        assert verified and "recovered" in verified[0], f"{head}: not verified\n{out}"
        assert "DECIDED: " in block and "DID: " in block, f"{head}\n{out}"
    assert "== remediation report ==" in out and "PROCEDURE" in out, out
    assert "ALL FAULTS REMEDIATED AND VERIFIED" in out
    assert_nothing_left(out, redis_server, audit_db)
    print(f"demo run time: {took:.0f} s")


def test_demo_refuses_a_redis_database_it_does_not_own(
    redis_server: RedisServer, audit_db: str, tmp_path: Path
) -> None:
    """A key the demo did not write in one of its Redis databases: exit 2, a message naming
    the database, the key kept and no database created."""
    foreign = redis.Redis.from_url(redis_server.url(12))
    foreign.set("someone:else", "1")
    try:
        done = run_demo(process_env(redis_server, audit_db))
        assert done.returncode == 2, done.stdout
        assert "Redis database 12 holds 1 keys the demo did not write" in done.stdout
        assert "--redis-db-base N" in done.stdout  # how to choose others
        assert foreign.get("someone:else") == b"1"
        assert "remediation_demo" not in databases(audit_db)
    finally:
        foreign.delete("someone:else")


def test_demo_refuses_a_database_it_did_not_make(redis_server: RedisServer, audit_db: str) -> None:
    """A database named like the demo's that the demo did not make: exit 2, the database and
    its table kept (the demo drops only databases carrying its own comment)."""
    with psycopg.connect(audit_db, autocommit=True) as conn:
        conn.execute("CREATE DATABASE remediation_demo")
    someone = audit_db.rsplit("/", 1)[0] + "/remediation_demo"
    try:
        with psycopg.connect(someone, autocommit=True) as conn:
            conn.execute("CREATE TABLE precious (id int)")
        done = run_demo(process_env(redis_server, audit_db))
        assert done.returncode == 2, done.stdout
        assert "a database remediation_demo exists that `make demo` did not make" in done.stdout
        with psycopg.connect(someone, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('precious')").fetchone() == ("precious",)
    finally:
        with psycopg.connect(audit_db, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS remediation_demo WITH (FORCE)")


def test_demo_stops_everything_on_ctrl_c(redis_server: RedisServer, audit_db: str) -> None:
    """SIGINT during the first fault: exit 130, and the clean-up leaves nothing behind."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        env=process_env(redis_server, audit_db),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("BREAK: "):
                proc.send_signal(signal.SIGINT)
                break
        lines += proc.stdout.readlines()
        assert proc.wait(120) == 130, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert "demo: interrupted" in out
    assert_nothing_left(out, redis_server, audit_db)


def test_demo_without_docker_skips_the_container_and_fixes_the_rest(
    redis_server: RedisServer, audit_db: str, tmp_path: Path
) -> None:
    """With no engine at REMEDIATION_CONTAINERS__DOCKER_URL the container fault is a SKIP line
    and the other faults are still remediated and verified (exit 0)."""
    url = f"unix://{tmp_path}/no-docker.sock"
    done = run_demo(process_env(redis_server, audit_db, REMEDIATION_CONTAINERS__DOCKER_URL=url))
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr[-3000:]}"
    assert f"SKIP: kill a container: Docker not available (no engine answers at {url})" in out
    assert "BREAK: kill container" not in out and "compose project" not in out
    assert out.count("\nVERIFIED: ") == out.count("\nBREAK: ") >= 3, out
    assert "ALL FAULTS REMEDIATED AND VERIFIED" in out
    assert_nothing_left(out, redis_server, audit_db)


def test_demo_waits_its_turn_behind_a_running_demo(
    redis_server: RedisServer, audit_db: str
) -> None:
    """While another demo holds the advisory lock: exit 2 naming it, and nothing touched."""
    from demo.run import LOCK_ID

    owned = redis.Redis.from_url(redis_server.url(10))
    owned.set("remediation-demo:owner", "the other demo")
    try:
        with psycopg.connect(audit_db, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
            done = run_demo(process_env(redis_server, audit_db))
        assert done.returncode == 2, done.stdout
        assert "another `make demo` is running on this PostgreSQL" in done.stdout
        assert owned.get("remediation-demo:owner") == b"the other demo"  # not claimed
        assert "remediation_demo" not in databases(audit_db)
    finally:
        owned.delete("remediation-demo:owner")


def test_a_fault_nobody_fixes_is_failed_within_the_bound(
    redis_server: RedisServer,
    audit_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fault with no verified fix in the audit within FAULT_TIMEOUT prints FAILED and counts
    as failed (the demo then exits 1)."""
    import demo.faults as faults
    import demo.run as run
    from remediation.audit.store import AuditStore

    AuditStore(audit_db).upgrade()
    monkeypatch.setattr(faults, "FAULT_TIMEOUT", 1.5)
    d = run.Demo(audit_db, redis_server.url(0), "unix:///nonexistent.sock", tmp_path)
    d.audit_dsn = audit_db
    started = time.monotonic()
    assert d.fault("nothing broken", "vacuum_analyze", lambda: None) is False
    assert time.monotonic() - started < 10
    out = capsys.readouterr().out
    assert "BREAK: nothing broken" in out
    assert "FAILED: nothing broken: no verified vacuum_analyze within 2 s" in out
    assert d.results[-1][:2] == ("nothing broken", "FAILED")
