"""The `remediation` command against the test Redis and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from remediation.cli import main, parse_since
from remediation.guards import keys
from tests.support.base import free_port
from tests.support.services import RedisServer

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
        env=dict(os.environ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
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


def test_json_before_or_after_the_verb(settings_env: Any, capsys: Any) -> None:
    """`--json` works before the verb, after it and after the verb's own options; without it
    the output is the human table."""
    settings_env()
    for argv in (
        ["--json", "schedule"],
        ["schedule", "--json"],
        ["history", "--json", "--limit", "2"],
        ["history", "--limit", "2", "--json"],
        ["run", "redis_job_queue", "--json"],
    ):
        assert main(argv) == 0, argv
        json.loads(capsys.readouterr().out)
    assert main(["schedule"]) == 0
    assert capsys.readouterr().out.startswith("ENTRY")


def _audit_dsn_variants(audit_db: str) -> list[tuple[str, str, str, str]]:
    """(dsn, host, port, cause): a port nobody listens on, and a database that is not there;
    both DSNs carry a password that must never be shown."""
    info = psycopg.conninfo.conninfo_to_dict(audit_db)
    host, user = info.get("host", "127.0.0.1"), info.get("user", "postgres")
    port = free_port()
    return [
        (
            f"postgresql://ops:pw-HUNTER2@127.0.0.1:{port}/audit_here",
            "127.0.0.1",
            str(port),
            "Connection refused",
        ),
        (
            f"postgresql://{user}:pw-HUNTER2@{host}:{info.get('port', '5432')}/no_such_audit_db",
            host,
            info.get("port", "5432"),
            'database "no_such_audit_db" does not exist',
        ),
    ]


def test_unreachable_or_missing_audit_database_is_one_line(
    settings_env: Any, capsys: Any, audit_db: str, r: redis.Redis
) -> None:
    """An audit database that refuses connections or does not exist makes every command that
    needs it exit 1 with one line naming host, port, database and cause, never the password;
    a breaker reset that cannot be audited leaves the breaker as it was."""
    r.sadd(keys.BREAKER_INDEX, "flush_cache:cache")
    for dsn, host, port, cause in _audit_dsn_variants(audit_db):
        settings_env(REMEDIATION_AUDIT_DSN=dsn)
        database = dsn.rsplit("/", 1)[1]
        for argv in (
            ["history"],
            ["--json", "report"],
            ["db", "upgrade"],
            ["status"],
            ["breakers", "reset", "flush_cache:cache"],
        ):
            assert main(argv) == 1, argv
            out = capsys.readouterr()
            (line,) = out.err.strip().splitlines()
            assert line.startswith("remediation: audit database"), line
            for part in (f'"{database}"', f"host {host}", f"port {port}", cause):
                assert part in line, (argv, part, line)
            assert "HUNTER2" not in out.err + out.out
        assert r.sismember(keys.BREAKER_INDEX, "flush_cache:cache")


def test_unreachable_audit_database_subprocess_has_no_traceback(
    settings_env: Any, audit_db: str
) -> None:
    """As a command, `remediation history` on a missing audit database prints one line on
    stderr and exits 1, with no traceback."""
    settings_env()
    dsn = _audit_dsn_variants(audit_db)[1][0]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "remediation"), "history"],
        env={**os.environ, "REMEDIATION_AUDIT_DSN": dsn},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no_such_audit_db" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and "HUNTER2" not in proc.stderr


def test_run_act_exits_1_when_an_action_failed(
    settings_env: Any, capsys: Any, redis_server: RedisServer
) -> None:
    """`run CHECK --act` exits 1 when a playbook action failed (a job list on a Redis that
    refuses writes), and the failure with its reason shows in `history`'s table."""
    jobs = RedisServer().start()
    try:
        settings_env(REMEDIATION_REDIS_TARGETS=json.dumps({"jobs": jobs.url(0)}))
        client = redis.Redis.from_url(jobs.url(0))
        client.rpush("job_queue", "a", "b", "a")
        client.config_set("maxmemory", "1")  # reads answer, every write is refused (OOM)
        code, data = run(
            capsys, "run", "redis_job_queue", "--kwargs", '{"target": "jobs"}', "--act"
        )
        outcomes = {a["action"]: a["outcome"] for a in data["actions"]}
        assert outcomes["remediation.act.dedupe_job_queue"] == "failed"
        assert code == 1
        assert client.lrange("job_queue", 0, -1) == [b"a", b"b", b"a"]
        assert main(["history", "--action", "dedupe_job_queue", "--since", "1h"]) == 0
        table_text = capsys.readouterr().out
        (row,) = [line for line in table_text.splitlines() if "jobs/job_queue" in line]
        assert " failed " in row and "command not allowed when used memory" in row, row
    finally:
        jobs.stop()


def test_history_table_shows_refused_and_deferred_with_reasons(
    settings_env: Any, capsys: Any, r: redis.Redis
) -> None:
    """A call refused by its resolve step (a real flush_cache with no patterns configured),
    one refused and one deferred after admission show those outcomes and their reasons in
    the human table; --outcome finds each."""
    from remediation.audit.store import AuditStore
    from remediation.runner import Runner

    s = settings_env()
    out = Runner(s, lambda *sent: None).run_action("flush_cache", {}, task_id="cli-refused")
    assert out.outcome == "refused"
    store = AuditStore(s.audit_dsn.get_secret_value())
    for outcome, why in (
        ("refused", "no container named web-9"),
        ("deferred", "in its restart back-off until 12:00:40"),
    ):
        decision = store.add_decision(
            action="restart_container",
            target="self",
            resource=f"cli-{outcome}",
            decision="admitted",
        )
        store.add_action_run(
            action="restart_container",
            target="self",
            resource=f"cli-{outcome}",
            params={},
            outcome=outcome,
            error=why,
            decision_id=decision,
            verification="skipped",
        )
    assert main(["history", "--since", "1h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    start = header.index("OUTCOME")

    def row(resource: str) -> str:
        (line,) = [x for x in lines if f" {resource} " in x]
        return line

    flush = next(x for x in lines if x.split()[2:3] == ["flush_cache"])
    assert flush[start:].startswith("refused") and "FLUSH_PATTERNS is empty" in flush
    assert row("cli-refused")[start:].startswith("refused")
    assert "no container named web-9" in row("cli-refused")
    assert row("cli-deferred")[start:].startswith("deferred")
    assert "restart back-off until 12:00:40" in row("cli-deferred")
    for outcome in ("refused", "deferred"):
        code, rows = run(capsys, "history", "--outcome", outcome, "--since", "1h")
        assert code == 0 and any(x["resource"] == f"cli-{outcome}" for x in rows)


@pytest.mark.parametrize(
    ("command", "disposition"), [("watch", "SIG_IGN"), ("serve", "SIG_IGN"), ("status", "SIG_DFL")]
)
def test_daemons_survive_a_closed_socket_and_commands_end_quietly_in_a_pipe(
    command: str, disposition: str
) -> None:
    """`remediation watch` and `serve` keep Python's SIGPIPE handling (a write to a socket the
    peer closed is an EPIPE error they handle: the watcher reconnects), other commands die
    quietly in `| head`. Found by the watcher's reconnect test: SIG_DFL killed it."""
    code = (
        "import signal, sys\n"
        "import remediation.cli as cli\n"
        "show = lambda args, settings: print(signal.getsignal(signal.SIGPIPE).name) or 0\n"
        f"cli.COMMANDS[{command!r}] = show\n"
        f"sys.argv = ['remediation', {command!r}]\n"
        "sys.exit(cli.main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == disposition
