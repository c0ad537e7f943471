"""Runbook 001 "Backup Verification" end to end: beat, a real worker, pg_dump, pg_restore.

The schedule's postgres_backups check finds no backup; backup_database dumps and hands the
dump straight to verify_backup in the same incident, so it is proven restorable seconds
later, not at a later sweep. A dump truncated on disk fails its verification, is moved
into quarantine/ with its manifest and the reason, stays there through retention, and the
next sweep takes a fresh dump that is verified in turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from remediation import backups, quarantine
from tests.support.audit import Audit
from tests.support.backups import fill
from tests.support.base import wait_for
from tests.support.env import process_env
from tests.support.processes import Beat, WorkerProcess
from tests.support.rabbitmq import Broker
from tests.support.services import as_url, scratch_database

pytestmark = pytest.mark.redis_only("beat runs on redbeat; backups do not involve the broker")

STATE_DB, BROKER_DB = 3, 7  # apart from the other integration workers' databases
SCHEDULE = """
SCHEDULE = {
    "backups": {
        "task": "remediation.check.postgres_backups",
        "schedule": 3,
        "kwargs": {"target": "app"},
    },
}
"""


@pytest.fixture(scope="module")
def source_db(pg_admin: str) -> Iterator[str]:
    with scratch_database(pg_admin, "rem_backup_e2e") as dsn:
        fill(dsn, {"orders": 300, "events": 40})
        yield as_url(dsn)


@pytest.fixture(scope="module")
def backup_env(
    broker: Broker, audit_db: str, source_db: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    home = tmp_path_factory.mktemp("backup_e2e")
    (home / "backup_schedule.py").write_text(SCHEDULE)
    broker.redis.empty(STATE_DB)
    broker.redis.empty(BROKER_DB)
    return process_env(
        broker.redis,
        audit_db,
        REMEDIATION_STATE_REDIS_URL=broker.redis.url(STATE_DB),
        REMEDIATION_BROKER_URL=broker.redis.url(BROKER_DB),
        REMEDIATION_POSTGRES_TARGETS__APP=source_db,
        REMEDIATION_BACKUP__DIR=str(home / "backups"),
        REMEDIATION_BACKUP__KEEP_DAILY="1",
        REMEDIATION_BACKUP__KEEP_WEEKLY="0",
        REMEDIATION_BACKUP__KEEP_MONTHLY="0",
        # the shipped cooldowns (10 min) would make the test wait; the chain is the subject
        REMEDIATION_GUARDS__COOLDOWN_OVERRIDES='{"backup_database": 1, "verify_backup": 0}',
        REMEDIATION_SCHEDULE_MODULE="backup_schedule",
        PYTHONPATH=str(home),
        REMEDIATION_CELERY__REDBEAT_LOCK_TIMEOUT="10",
        REMEDIATION_CELERY__BEAT_MAX_LOOP_INTERVAL="1",
    )


@pytest.fixture(scope="module")
def backup_worker(backup_env: dict[str, str]) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(backup_env, "backups").start()
    yield worker
    worker.stop()


@pytest.fixture
def beat(
    backup_env: dict[str, str], backup_worker: WorkerProcess, tmp_path: Path
) -> Iterator[Beat]:
    started = Beat(backup_env, tmp_path / "beat.log")
    yield started
    started.kill()


def dumps(folder: Path) -> list[Path]:
    return [path for path, _ in backups.dump_files(folder, "app")]


def runs(audit: Audit, action: str, **where: Any) -> list[dict[str, Any]]:
    extra = "".join(f" AND {column} = %s" for column in where)
    return audit.rows(
        f"SELECT * FROM action_runs WHERE action = %s{extra} ORDER BY id", action, *where.values()
    )


def test_scheduled_dump_is_verified_at_once_and_a_rotten_one_is_quarantined_and_replaced(
    backup_env: dict[str, str], beat: Beat, audit_db: str
) -> None:
    audit = Audit(audit_db)
    folder = Path(backup_env["REMEDIATION_BACKUP__DIR"]) / "app"
    client = Celery(
        broker=backup_env["REMEDIATION_BROKER_URL"],
        backend=backup_env["REMEDIATION_RESULT_BACKEND"],
    )
    key = backup_env["REMEDIATION_SIGNING_KEY"].encode()

    def verification(dump: Path) -> dict[str, Any] | None:
        try:
            return backups.read_manifest(backups.manifest_path(dump), key).get("verification")
        except (OSError, ValueError, backups.BackupError):
            return None

    # 1. the schedule finds no backup: a dump is taken and verified within a minute
    first = wait_for(lambda: dumps(folder) or None, 60, 0.2, "a scheduled dump")[0]
    done = wait_for(lambda: verification(first), 60, 0.2, f"{first.name} verified")
    assert done["ok"] is True and done["tables"] == 2, done
    (dumped,) = wait_for(
        lambda: runs(audit, "backup_database", outcome="succeeded"),
        30,
        0.2,
        "backup_database audited",
    )
    verified = wait_for(
        lambda: [
            r
            for r in runs(audit, "verify_backup", outcome="succeeded")
            if r["params"].get("file") == first.name
        ],
        30,
        0.2,
        "verify_backup audited",
    )
    # handed on by backup_database itself: same finding (incident), a follow-up of it
    assert verified[0]["finding_id"] == dumped["finding_id"] is not None
    assert dumped["result"]["follow_up"] == [
        {"action": "verify_backup", "params": {"target": "app", "file": first.name}}
    ]

    # 2. the dump rots on disk; the operator's by-hand verification fails and moves it aside
    with open(first, "r+b") as handle:
        handle.truncate(first.stat().st_size // 2)
    res = client.send_task(
        "remediation.act.verify_backup", kwargs={"target": "app", "file": first.name}
    )
    outcome = res.get(timeout=120)
    assert outcome["outcome"] == "failed", outcome
    into = folder / backups.QUARANTINE
    (note,) = quarantine.listed(into)
    assert note.path.name == first.name and "checksum step failed" in note.reason
    assert (into / (first.name + ".json")).exists() and not first.exists()

    # 3. the next sweeps take a fresh dump, verify it, and retention leaves the quarantine alone
    fresh = wait_for(
        lambda: [d for d in dumps(folder) if d.name != first.name] or None, 60, 0.2, "a fresh dump"
    )[0]
    again = wait_for(lambda: verification(fresh), 60, 0.2, f"{fresh.name} verified")
    assert again["ok"] is True
    assert [q.path.name for q in quarantine.listed(into)] == [first.name]
    assert sorted(p.name for p in into.iterdir()) == sorted(
        [first.name, first.name + ".json", first.name + quarantine.NOTE_SUFFIX]
    )
    findings = audit.rows(
        "SELECT kind, evidence FROM findings WHERE check_name = 'postgres_backups'"
        " AND kind = 'postgres_backup_quarantined'"
    )
    assert findings and json.dumps(findings[0]["evidence"]).find("checksum") >= 0
    assert len(dumps(folder)) == 1  # retention (one a day) ran with the fresh dump
