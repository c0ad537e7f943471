"""The spine end to end: real Celery workers, real Redis, real PostgreSQL, real webhook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kombu
import psycopg
import pytest
import redis
from celery import Celery

from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.http_doubles import WebhookReceiver
from tests.support.postgres import bloat, dead_rows
from tests.support.processes import WorkerProcess
from tests.support.services import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).parent / "celery")
REMEDIATION = str(Path(sys.executable).parent / "remediation")


def last_vacuums(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT relname, last_vacuum FROM pg_stat_user_tables").fetchall())


def test_sweep_vacuums_the_bloated_table_and_no_other(
    client: Celery, audit: Audit, app_db: str
) -> None:
    """One sweep: finding -> decision -> VACUUM of that table only -> verified recovered."""
    bloat(app_db, "Price History")
    bloat(app_db, "healthy", delete_share=0.01)
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ANALYZE healthy")  # fresh statistics: nothing to do for this table
    wait_for(lambda: dead_rows(app_db, "Price History") >= 4000, 20, 0.3, "stats flush")
    sweep = client.send_task("remediation.check.postgres_dead_tuples", kwargs={"target": "app"})
    assert sweep.get(timeout=60)["dispatched"] == 1
    (run,) = audit.wait_rows(
        "SELECT * FROM action_runs WHERE action = 'vacuum_analyze' AND target = 'app'"
        " AND verification IS NOT NULL",
        timeout=90,
    )
    assert run["outcome"] == "succeeded" and run["verification"] == "recovered"
    assert run["params"] == {
        "target": "app",
        "tables": [{"schema": "public", "name": "Price History"}],
    }
    (chain,) = audit.rows(
        """SELECT c.purpose AS detect, c.task_id, f.kind, f.subject, d.decision,
                  v.purpose AS verify,
                  (SELECT count(*) FROM findings x WHERE x.check_run_id = v.id
                     AND x.fingerprint = f.fingerprint) AS left_after
           FROM action_runs a
           JOIN guard_decisions d ON d.id = a.decision_id
           JOIN findings f ON f.id = a.finding_id AND f.id = d.finding_id
           JOIN check_runs c ON c.id = f.check_run_id
           JOIN check_runs v ON v.id = a.verify_check_run_id
           WHERE a.id = %s""",
        run["id"],
    )
    assert chain == {
        "detect": "detect",
        "task_id": sweep.id,
        "kind": "postgres_dead_tuples_high",
        "subject": "public.Price History",
        "decision": "admitted",
        "verify": "verify",
        "left_after": 0,
    }
    vacuumed = {t for t, at in last_vacuums(app_db).items() if at is not None}
    assert vacuumed == {"Price History"}


def test_failing_action_trips_breaker_notifies_once_and_reset_closes(
    client: Celery, audit: Audit, webhook: WebhookReceiver, worker_env: dict[str, str]
) -> None:
    """Three failures open the breaker; later calls are suppressed; one breaker notice; reset.
    (The target's server is down: the action's effect fails after its resolve step passed.)"""
    kwargs = {"target": "broken"}
    action = "remediation.act.terminate_idle_transactions"
    outcomes = [client.send_task(action, kwargs=kwargs).get(timeout=60) for _ in range(5)]
    assert [o["outcome"] for o in outcomes] == ["failed"] * 3 + ["suppressed"] * 2
    suppressed = audit.rows(
        "SELECT guard, reason FROM guard_decisions WHERE action = 'terminate_idle_transactions'"
        " AND target = 'broken' AND decision = 'suppressed'"
    )
    assert [s["guard"] for s in suppressed] == ["breaker", "breaker"]
    wait_for(lambda: any(b["kind"] == "breaker_open" for b in webhook.bodies), 30, 0.2, "webhook")
    wait_for(
        lambda: len(audit.rows("SELECT 1 FROM action_runs WHERE action = 'notify'")) >= 4,
        30,
        0.2,
        "notify runs",
    )
    mine = [b for b in webhook.bodies if "broken" in b["incident"]]
    assert sorted(b["kind"] for b in mine) == ["action_failed", "breaker_open"]
    assert "terminate_idle_transactions:broken" in next(
        b["text"] for b in mine if b["kind"] == "breaker_open"
    )

    env = {**worker_env}
    listing = subprocess.run(
        [REMEDIATION, "--json", "breakers"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert {"name": "terminate_idle_transactions:broken", "state": "open"}.items() <= next(
        b for b in json.loads(listing.stdout) if b["name"] == "terminate_idle_transactions:broken"
    ).items()
    reset = subprocess.run(
        [REMEDIATION, "breakers", "reset", "terminate_idle_transactions:broken"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reset.returncode == 0, reset.stderr
    after = client.send_task(action, kwargs=kwargs).get(timeout=60)
    assert after["outcome"] == "failed"  # allowed again: the breaker is closed
    assert audit.rows("SELECT 1 FROM guard_decisions WHERE decision = 'breaker_reset'")


def test_eight_concurrent_triggers_run_once(
    client: Celery, audit: Audit, worker_env: dict[str, str], workers: list[WorkerProcess]
) -> None:
    """Eight simultaneous triggers on one target across two workers: one run, seven refusals."""
    r = redis.Redis.from_url(worker_env["REMEDIATION_STATE_REDIS_URL"])
    r.rpush("conc_queue", *[json.dumps({"id": i % 3}) for i in range(30)])
    kwargs = {"target": "self", "key": "conc_queue"}
    results = [
        client.send_task("remediation.act.dedupe_job_queue", kwargs=kwargs) for _ in range(8)
    ]
    outcomes = [res.get(timeout=60)["outcome"] for res in results]
    assert outcomes.count("succeeded") == 1
    assert outcomes.count("suppressed") == 7
    assert r.llen("conc_queue") == 3
    rows = audit.rows(
        "SELECT d.decision, d.guard, a.outcome FROM guard_decisions d LEFT JOIN action_runs a"
        " ON a.decision_id = d.id WHERE d.resource = 'self/conc_queue'"
    )
    assert len(rows) == 8
    assert sum(1 for x in rows if x["outcome"] == "succeeded") == 1
    assert {x["guard"] for x in rows if x["decision"] == "suppressed"} <= {"lock", "cooldown"}
    ran_on = {w.name for w in workers if "dedupe_job_queue" in w.log()}
    assert ran_on == {"w1", "w2"}, "both worker processes received triggers"


def celery_call(env: dict[str, str], task: str, kwargs: str) -> str:
    proc = subprocess.run(
        [CELERY, "-A", "remediation", "call", task, "--kwargs", kwargs],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_celery_call_with_bad_kwargs_runs_nothing_and_is_audited(
    audit: Audit, worker_env: dict[str, str], app_db: str
) -> None:
    """Unknown or wrong-typed kwargs through `celery call` are rejected with the reason."""
    before = last_vacuums(app_db)
    bad = {
        "unknown": '{"target": "app", "tables": ["public.healthy"], "bogus": 1}',
        "wrong_type": '{"target": "app", "tables": "public.healthy"}',
        "secret": '{"target": "app", "tables": ["x"], "api_key": "leak-me-123"}',
    }
    ids = {k: celery_call(worker_env, "remediation.act.vacuum_analyze", v) for k, v in bad.items()}
    for case, task_id in ids.items():
        (row,) = audit.wait_rows("SELECT * FROM action_runs WHERE task_id = %s", task_id)
        assert row["outcome"] == "rejected", case
        assert not audit.rows("SELECT 1 FROM guard_decisions WHERE task_id = %s", task_id)
    reasons = {
        k: audit.rows("SELECT error FROM action_runs WHERE task_id = %s", v)[0]["error"]
        for k, v in ids.items()
    }
    assert "bogus: Extra inputs are not permitted" in reasons["unknown"]
    assert "tables" in reasons["wrong_type"]
    check_id = celery_call(worker_env, "remediation.check.redis_job_queue", '{"nope": true}')
    (check,) = audit.wait_rows("SELECT * FROM check_runs WHERE task_id = %s", check_id)
    assert check["status"] == "rejected" and "nope" in check["error"]
    assert last_vacuums(app_db) == before


def test_passwords_appear_in_no_log_line_and_no_audit_row(
    audit: Audit, workers: list[WorkerProcess], webhook: WebhookReceiver
) -> None:
    """After every flow above, the DSN password and webhook path are nowhere to be read."""
    assert audit.rows("SELECT 1 FROM action_runs LIMIT 1"), "runs after the other tests"
    text = audit.everything_as_text()
    logs = "\n".join(w.log() for w in workers)
    for secret in (PASSWORD, "secret-path", "leak-me-123"):
        assert secret not in text, f"{secret} in audit rows"
        assert secret not in logs, f"{secret} in worker logs"
    assert "***" in text  # the redacted kwargs were audited, masked
    assert os.environ.get("REMEDIATION_AUDIT_DSN", "") == "" or PASSWORD not in os.environ.get(
        "REMEDIATION_AUDIT_DSN", ""
    )


def test_celery_call_masks_secrets_in_kwargsrepr(worker_env: dict[str, str]) -> None:
    """The message `celery call` publishes carries masked argsrepr/kwargsrepr headers."""
    kwargs = (
        '{"text": "t", "incident": "i", "api_key": "leak-777", "dsn": "postgresql://u:pw-777@h/d"}'
    )
    call = "-A remediation call remediation.act.notify --queue nobody --kwargs".split()
    proc = subprocess.run(
        [CELERY, *call, kwargs],
        env=worker_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # read back through kombu: a Redis list or a RabbitMQ queue alike
    with kombu.Connection(worker_env["REMEDIATION_BROKER_URL"]) as conn:
        queue = conn.SimpleQueue("nobody")
        message = queue.get(timeout=10)
        headers = dict(message.headers)
        message.ack()
        with pytest.raises(queue.Empty):  # exactly one message was published
            queue.get(block=False)
        queue.close()
    assert "leak-777" not in headers["kwargsrepr"] and "pw-777" not in headers["kwargsrepr"]
    assert "***" in headers["kwargsrepr"] and "'text': 't'" in headers["kwargsrepr"]


def test_log_lines_carry_task_action_and_target(workers: list[WorkerProcess]) -> None:
    """Every runner log line inside a task is bound to its task id, action/check and target."""
    events = [
        json.loads(line) for w in workers for line in w.log().splitlines() if line.startswith("{")
    ]
    done = [e for e in events if e.get("event") == "action done"]
    assert done, "actions ran in the workers"
    assert all({"task_id", "action", "target", "resource"} <= e.keys() for e in done)
    checks = [e for e in events if e.get("event") == "check done"]
    assert checks and all({"task_id", "check", "target"} <= e.keys() for e in checks)
