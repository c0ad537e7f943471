"""AuditStore against a private PostgreSQL that is crash-stopped and started again: rows
written while it is down are spooled, then replayed in order, exactly once, unchanged."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from remediation.audit.spool import ACTIVE, CLAIMED
from remediation.audit.store import AuditStore
from remediation.errors import AuditError
from tests.support.base import ROOT, wait_for
from tests.support.env import clean_environ
from tests.support.pg_cluster import Cluster, outage, past_down_window
from tests.support.trail import SECRET, TABLES, counts, dump, finding, rows, write_trail


def spooled(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith((ACTIVE, CLAIMED)))


def test_rows_written_while_down_are_spooled_fsynced_and_redacted(
    db: str, cluster: Cluster, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write while down is one fsync'd JSON line in this process's file; no secret."""
    store = AuditStore(db, spool_dir=spool_dir)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    started = time.monotonic()
    with outage(cluster):
        write_trail(store, "t-down")
        elapsed = time.monotonic() - started
    (path,) = spooled(spool_dir)
    assert store.spool is not None and path == store.spool.own_path()
    assert len(path.read_bytes().splitlines()) == 7
    assert synced.count(str(path)) == 7  # every append synced before it returned
    assert SECRET not in path.read_text()
    assert elapsed < 10  # the writes did not wait on the dead server


def test_replay_keeps_ids_times_order_and_redaction(
    db: str, cluster: Cluster, spool_dir: Path
) -> None:
    """Replayed rows carry the ids and times they were written with, FKs intact, redacted
    exactly like rows written directly."""
    store = AuditStore(db, spool_dir=spool_dir)
    direct = write_trail(store, "t-direct")
    before = datetime.now(UTC)
    with outage(cluster):
        ids = write_trail(store, "t-down")
        after = datetime.now(UTC)
        time.sleep(1.0)
    assert store.replay_spool() == 7 and spooled(spool_dir) == []
    assert ids["run"] < ids["finding"] < ids["decision"] < ids["action"]
    (run,) = rows(db, "SELECT * FROM check_runs WHERE id = %s", ids["run"])
    (f,) = rows(db, "SELECT * FROM findings WHERE id = %s", ids["finding"])
    (d,) = rows(db, "SELECT * FROM guard_decisions WHERE id = %s", ids["decision"])
    (a,) = rows(db, "SELECT * FROM action_runs WHERE id = %s", ids["action"])
    (o,) = rows(db, "SELECT * FROM observations ORDER BY id DESC LIMIT 1")
    assert (f["check_run_id"], d["finding_id"], a["decision_id"]) == (run["id"], f["id"], d["id"])
    assert (run["status"], a["verification"], a["verify_check_run_id"]) == (
        "ok",
        "recovered",
        run["id"],
    )
    for at in (
        run["started_at"],
        run["finished_at"],
        f["seen_at"],
        d["decided_at"],
        a["started_at"],
        a["verified_at"],
        o["observed_at"],
    ):
        assert before <= at <= after  # when it happened, not when it was replayed
    (drun,) = rows(db, "SELECT * FROM check_runs WHERE id = %s", direct["run"])
    (da,) = rows(db, "SELECT * FROM action_runs WHERE id = %s", direct["action"])
    assert (run["params"], a["params"]) == (drun["params"], da["params"])
    assert SECRET not in str(dump(db))


def test_next_write_after_recovery_replays_first(
    db: str, cluster: Cluster, spool_dir: Path
) -> None:
    """The first write once PostgreSQL answers replays the spool before itself (the update
    of a check run started during the outage finds its row)."""
    store = AuditStore(db, spool_dir=spool_dir)
    with outage(cluster):
        run = store.start_check_run("c", "app", {}, "detect", "t-1")
    past_down_window()
    store.finish_check_run(run, "ok", 0, 1.0)
    (row,) = rows(db, "SELECT status, finished_at FROM check_runs WHERE id = %s", run)
    assert row["status"] == "ok" and row["finished_at"] is not None
    assert spooled(spool_dir) == []


def test_replaying_the_same_files_twice_writes_each_row_once(
    db: str, cluster: Cluster, spool_dir: Path, tmp_path: Path
) -> None:
    """Files replayed again (a round that crashed before removing them) change nothing."""
    store = AuditStore(db, spool_dir=spool_dir)
    with outage(cluster):
        write_trail(store, "t-1")
        write_trail(store, "t-2")
    copy = tmp_path / "copy"
    shutil.copytree(spool_dir, copy)
    assert store.replay_spool() == 14
    first = dump(db)
    for path in spooled(copy):
        shutil.copy(path, spool_dir / path.name)
    assert store.replay_spool() == 14  # applied again as no-ops
    assert dump(db) == first
    assert counts(db) == dict.fromkeys(TABLES, 2)


def _python(code: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**clean_environ(), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


REPLAY = (
    "import sys; from remediation.audit.store import AuditStore as S; "
    "print(S(sys.argv[1], spool_dir=sys.argv[2]).replay_spool())"
)


def test_replayer_killed_mid_round_loses_and_duplicates_nothing(
    db: str, cluster: Cluster, spool_dir: Path
) -> None:
    """kill -9 of a replaying process after its first row: the next round completes the rest,
    every row exactly once."""
    store = AuditStore(db, spool_dir=spool_dir)
    with outage(cluster):
        for n in range(3):
            write_trail(store, f"t-{n}")
    with psycopg.connect(db) as blocker:  # holds the round at the first finding
        blocker.execute("LOCK TABLE findings IN ACCESS EXCLUSIVE MODE")
        proc = _python(REPLAY, db, str(spool_dir))
        try:
            waiting = (
                "SELECT count(*) AS n FROM pg_stat_activity WHERE"
                " application_name = 'remediation-audit' AND wait_event_type = 'Lock'"
            )
            wait_for(
                lambda: rows(db, waiting)[0]["n"] == 1,
                30,
                0.05,
                "replay blocked at the first finding",
            )
            assert rows(db, "SELECT count(*) AS n FROM check_runs")[0]["n"] == 1
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        blocker.rollback()
    assert [p.name.endswith(CLAIMED) for p in spooled(spool_dir)] == [True]
    assert store.replay_spool() == 21
    assert counts(db) == dict.fromkeys(TABLES, 3)
    assert spooled(spool_dir) == []


WRITER = """
import sys, time
from remediation.audit.store import AuditStore
from tests.support.trail import write_trail
store = AuditStore(sys.argv[1], spool_dir=sys.argv[2])
for n in range(int(sys.argv[3])):
    write_trail(store, f"{sys.argv[4]}-{n}")
"""


def test_processes_sharing_a_spool_replay_concurrently_once(
    db: str, cluster: Cluster, spool_dir: Path
) -> None:
    """Four processes spool while down; then four more write at once (each replaying first):
    every trail is in the database exactly once and the spool is empty."""

    def run_all(tag: str, n: int) -> None:
        procs = [_python(WRITER, db, str(spool_dir), str(n), f"{tag}{i}") for i in range(4)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()[-2000:]

    with outage(cluster):
        run_all("down", 5)
        assert len(spooled(spool_dir)) == 4
    past_down_window()
    run_all("up", 1)
    assert counts(db) == dict.fromkeys(TABLES, 24)
    assert rows(db, "SELECT count(DISTINCT task_id) AS n FROM guard_decisions")[0]["n"] == 24
    assert spooled(spool_dir) == []


def test_parent_spooled_on_another_host_is_waited_for(
    db: str, cluster: Cluster, tmp_path: Path
) -> None:
    """A child whose parent waits in another host's spool stays spooled until the parent is
    replayed, then lands with its foreign key intact."""
    host_a = AuditStore(db, spool_dir=tmp_path / "a")
    host_b = AuditStore(db, spool_dir=tmp_path / "b")
    with outage(cluster):
        run = host_a.start_check_run("c", "app", {}, "detect", "t-a")
        fid = host_a.add_finding(run, finding(), "inc")
        did = decision_of(host_b, fid)
    assert host_b.replay_spool() == 0 and len(spooled(tmp_path / "b")) == 1
    assert host_a.replay_spool() == 2
    assert host_b.replay_spool() == 1
    (d,) = rows(db, "SELECT finding_id FROM guard_decisions WHERE id = %s", did)
    assert d["finding_id"] == fid


def decision_of(store: AuditStore, finding_id: int) -> int:
    """Host B's decision of the action it runs for host A's finding."""
    return store.add_decision(
        action="notify",
        target="app",
        resource="r",
        decision="admitted",
        finding_id=finding_id,
        task_id="t-b",
    )


def test_a_child_written_while_its_parent_waits_in_another_hosts_spool_is_spooled(
    db: str, cluster: Cluster, tmp_path: Path
) -> None:
    """The database is back, host A has not replayed yet (it was cut off: its finding waits
    in its spool) and host B, whose own spool is empty, writes the decision of the action
    it runs for that finding: spooled, not an error, and it lands once A has replayed."""
    host_a = AuditStore(db, spool_dir=tmp_path / "a")
    host_b = AuditStore(db, spool_dir=tmp_path / "b")
    with outage(cluster):
        run = host_a.start_check_run("c", "app", {}, "detect", "t-a")
        fid = host_a.add_finding(run, finding(), "inc")
    past_down_window()
    did = decision_of(host_b, fid)
    assert len(spooled(tmp_path / "b")) == 1
    assert host_a.replay_spool() == 2
    assert host_b.replay_spool() == 1
    (d,) = rows(db, "SELECT finding_id FROM guard_decisions WHERE id = %s", did)
    assert d["finding_id"] == fid


def test_hostile_content_round_trips_unchanged(db: str, cluster: Cluster, spool_dir: Path) -> None:
    """Quotes, newlines, SQL, unicode separators and a 3 MB evidence value (stored in its
    truncated form) come back from the spool exactly as a direct write stores them."""
    evil = "it's \"quoted\"\n\r\t\\ '); DROP TABLE findings; -- \u2028\u2029 ünï 🚀 $1 %s %(x)s"
    # words, not one 3 MB token: redact_text's URL pattern is quadratic on long letter runs
    big = "ab cd ef " * 350_000
    evidence: dict[str, Any] = {
        "q": evil,
        "big": big,
        "nested": [{"a": [1, 2.5, None, True, evil]}],
    }
    f = finding(summary=evil, evidence=evidence)
    store = AuditStore(db, spool_dir=spool_dir)
    direct = write_trail(store, "t-direct", f)
    with outage(cluster):
        down = write_trail(store, "t-down", f)
    (path,) = spooled(spool_dir)
    assert len(path.read_bytes().splitlines()) == 7
    assert store.replay_spool() == 7
    replayed, written = (
        rows(db, "SELECT summary, evidence FROM findings WHERE id = %s", ids["finding"])[0]
        for ids in (down, direct)
    )
    assert replayed == written and replayed["summary"] == evil
    assert replayed["evidence"]["_truncated"] and replayed["evidence"]["bytes"] > len(big)


def test_full_spool_refuses_and_keeps_what_it_took(
    db: str, cluster: Cluster, spool_dir: Path
) -> None:
    """Past spool_max_mb a write raises AuditError (the runner then does not act); the rows
    accepted before are all replayed."""
    store = AuditStore(db, spool_dir=spool_dir, spool_max_mb=1)
    accepted = 0
    blob = "yy " * 20_000  # under the store's JSON cap: kept whole, about 60 KB a line
    with outage(cluster), pytest.raises(AuditError, match="audit spool full"):
        for n in range(40):
            store.start_check_run("c", "app", {"blob": blob}, "detect", f"t-{n}")
            accepted += 1
    assert accepted == 17
    assert store.replay_spool() == 17 and counts(db)["check_runs"] == 17


def test_without_spool_dir_a_down_database_raises_quickly(db: str, cluster: Cluster) -> None:
    """AuditStore(dsn) keeps its old contract: AuditError, and no long wait on a dead server."""
    store = AuditStore(db)
    store.start_check_run("c", "app", {}, "detect", "t-up")
    started = time.monotonic()
    with outage(cluster):
        with pytest.raises(AuditError):
            store.start_check_run("c", "app", {}, "detect", "t-1")
        with pytest.raises(AuditError):
            store.start_check_run("c", "app", {}, "detect", "t-2")
        elapsed = time.monotonic() - started
    assert elapsed < 10


def test_checks_reads_degrade_and_cli_queries_raise_while_down(
    db: str, cluster: Cluster, spool_dir: Path
) -> None:
    """last_observation is None while down, record_observation spools, query raises
    AuditError; once replayed the spooled observation is the latest."""
    store = AuditStore(db, spool_dir=spool_dir)
    store.record_observation("chk", "app", "m", 1.0)
    with outage(cluster):
        assert store.last_observation("chk", "app", "m") is None
        store.record_observation("chk", "app", "m", 2.0)
        with pytest.raises(AuditError, match=r"unreachable|Connection refused"):
            store.history()
    past_down_window()
    latest = store.last_observation("chk", "app", "m")
    assert latest is not None and latest[0] == 2.0


def test_finished_run_reads_the_newest_outcome_of_a_task_and_nothing_while_down(
    db: str, cluster: Cluster, spool_dir: Path
) -> None:
    """What a resumed task looks up: its newest succeeded or failed run (a refused or
    deferred one does not count), none for another task, and none while the audit is down
    (the resume then acts as before rather than wait on a dead server)."""
    store = AuditStore(db, spool_dir=spool_dir)
    run = {"action": "vacuum_analyze", "target": "app", "resource": "app/t", "params": {}}
    store.add_action_run(**run, outcome="deferred", task_id="t1")
    assert store.finished_run("t1") is None
    first = store.add_action_run(**run, outcome="failed", task_id="t1")
    last = store.add_action_run(
        **run, outcome="succeeded", task_id="t1", result={"summary": "vacuumed 1 table(s)"}
    )
    found = store.finished_run("t1")
    assert found is not None and found["id"] == last != first
    assert found["outcome"] == "succeeded" and found["result"]["summary"] == "vacuumed 1 table(s)"
    assert store.finished_run("t2") is None
    with outage(cluster):
        assert store.finished_run("t1") is None
