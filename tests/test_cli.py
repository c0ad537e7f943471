"""The `remediation` command against the test Redis and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from remediation.cli import main, parse_since
from remediation.guards import keys

ROOT = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(["--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_playbook_lists_rules_with_guards_and_docs(settings_env: Any, capsys: Any) -> None:
    """Every rule shows its action, guards, runbook citation and docstring."""
    code, data = run(capsys, "playbook")
    assert code == 0
    vacuum = next(r for r in data["rules"] if r["finding"] == "postgres_dead_tuples_high")
    assert vacuum["action"] == "remediation.act.vacuum_analyze"
    assert "cooldown 3600s" in vacuum["guards"] and "breaker" in vacuum["guards"]
    assert vacuum["runbook"].startswith("001") and "VACUUM" in vacuum["doc"]


def test_schedule_shows_entries_and_next_runs(settings_env: Any, capsys: Any) -> None:
    """Each beat_schedule.py entry is listed with its crontab and next run time."""
    code, data = run(capsys, "schedule")
    assert code == 0
    weekly = next(e for e in data if e["entry"] == "weekly-vacuum-analyze")
    assert weekly["schedule"] == "0 3 * * 0" and weekly["next_run"]


def test_run_check_read_only_then_act(settings_env: Any, capsys: Any, r: redis.Redis) -> None:
    """`run` reports findings without acting; `run --act` runs the playbook in-process."""
    settings_env()
    r.rpush("job_queue", "a", "b", "a")
    code, data = run(capsys, "run", "redis_job_queue")
    assert code == 0 and [f["kind"] for f in data["findings"]] == ["redis_job_queue_duplicates"]
    assert data["actions"] == [] and r.llen("job_queue") == 3
    code, data = run(capsys, "run", "redis_job_queue", "--act")
    assert [a["outcome"] for a in data["actions"]] == ["succeeded"]
    assert data["actions"][0]["verification"] == "recovered"
    assert r.lrange("job_queue", 0, -1) == [b"a", b"b"]


def test_history_filters(settings_env: Any, capsys: Any, r: redis.Redis) -> None:
    """History filters by action and outcome and shows rejected calls too."""
    settings_env()
    r.rpush("job_queue", "x", "x")
    run(capsys, "run", "redis_job_queue", "--act")
    code, rows = run(capsys, "history", "--action", "dedupe_job_queue", "--since", "1h")
    assert code == 0 and rows and {x["action"] for x in rows} == {"dedupe_job_queue"}
    code, rows = run(capsys, "history", "--outcome", "no-such-outcome")
    assert rows == []


def test_pause_and_resume(settings_env: Any, capsys: Any, r: redis.Redis) -> None:
    """`pause` sets the maintenance key the guards read; `resume` clears it."""
    settings_env()
    assert run(capsys, "pause", "--reason", "upgrade", "--seconds", "60")[0] == 0
    assert r.get(keys.PAUSE) == b"upgrade" and 0 < r.ttl(keys.PAUSE) <= 60
    assert run(capsys, "resume")[1] == {"resumed": True}
    assert r.get(keys.PAUSE) is None


def test_bad_input_is_a_clear_error(settings_env: Any, capsys: Any) -> None:
    """Unknown checks, bad JSON and unknown breakers exit non-zero with a message."""
    assert main(["run", "nope_check"]) == 1
    assert "no check named 'nope_check'" in capsys.readouterr().err
    assert main(["run", "redis_job_queue", "--kwargs", "{bad"]) == 2
    assert main(["breakers", "reset", "nope:x"]) == 1
    with pytest.raises(Exception, match="7d"):
        parse_since("seven days")


def test_status_subprocess(settings_env: Any) -> None:
    """`remediation status --json` lists answering workers, queue depths and pause state."""
    settings_env()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "remediation"), "--json", "status"],
        env=dict(os.environ), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data["workers"], list) and data["paused"] is None
    assert isinstance(data["queues"]["celery"], int) and "unacked" in data["queues"]


def test_db_upgrade_is_idempotent(settings_env: Any, capsys: Any) -> None:
    """A second `db upgrade` applies nothing."""
    assert run(capsys, "db", "upgrade") == (0, {"applied": []})


def test_db_replay_writes_spooled_rows(settings_env: Any, capsys: Any, tmp_path: Path) -> None:
    """Rows spooled while the audit database did not answer are written by `db replay`,
    once: a second replay finds nothing."""
    from remediation.audit.store import AuditStore

    spool = tmp_path / "spool"
    s = settings_env(REMEDIATION_AUDIT__SPOOL_DIR=str(spool))
    down = AuditStore("postgresql://postgres@127.0.0.1:1/nowhere", spool_dir=spool)
    run_id = down.start_check_run("host_disk", "spooled-target", {}, "manual", "replay-1")
    assert any(spool.iterdir())
    capsys.readouterr()  # the store's own log lines before the command ran
    code, data = run(capsys, "db", "replay")
    assert (code, data["replayed"]) == (0, 1)
    rows = AuditStore(s.audit_dsn.get_secret_value()).query(
        "SELECT target FROM check_runs WHERE id = %s", (run_id,)
    )
    assert rows == [{"target": "spooled-target"}]
    assert run(capsys, "db", "replay")[1]["replayed"] == 0
