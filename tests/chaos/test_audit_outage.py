"""PostgreSQL crash-stopped and started under a stream of real Celery tasks: every task
completes, its audit rows land exactly once, and the spool is empty afterwards."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from remediation.audit.spool import ACTIVE, CLAIMED
from remediation.runner import Runner
from tests.support.base import wait_for
from tests.support.chaos import scale
from tests.support.env import process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.pg_cluster import Cluster
from tests.support.processes import WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database
from tests.support.trail import rows

BROKER_DB, BACKEND_DB, STATE_DB = 11, 12, 13  # private to this module


def spooled(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return [p for p in directory.iterdir() if p.name.endswith((ACTIVE, CLAIMED))]


@pytest.fixture
def runner_spools(settings_env: Any, tmp_path: Path) -> None:
    """The worker's Runner must build its store with the spool (AuditStore.from_settings)."""
    s = settings_env(REMEDIATION_AUDIT__SPOOL_DIR=str(tmp_path / "probe"))
    if Runner(s, lambda *a: None).store.spool is None:
        pytest.skip("the Runner does not pass REMEDIATION_AUDIT__SPOOL_DIR to its AuditStore yet")


def test_postgres_outages_lose_and_duplicate_no_audit_row(
    runner_spools: None,
    cluster: Cluster,
    redis_server: RedisServer,
    webhook: WebhookReceiver,
    tmp_path: Path,
) -> None:
    """scale(1, 5) crash-stops of the audit database under ~20 tasks a second: every task
    succeeds, has its rows exactly once, and nothing is left in the spool."""
    spool = tmp_path / "spool"
    for db in (BROKER_DB, BACKEND_DB, STATE_DB):
        redis_server.empty(db)
    with scratch_database(cluster.dsn, "rem_chaos_audit") as dsn:
        audit = as_url(dsn)
        env = process_env(
            redis_server,
            audit,
            REMEDIATION_AUDIT__SPOOL_DIR=str(spool),
            REMEDIATION_BROKER_URL=redis_server.url(BROKER_DB),
            REMEDIATION_RESULT_BACKEND=redis_server.url(BACKEND_DB),
            REMEDIATION_STATE_REDIS_URL=redis_server.url(STATE_DB),
            REMEDIATION_NOTIFY__WEBHOOK_URL=webhook.url,
            REMEDIATION_METRICS__ENABLED="false",
            REMEDIATION_METRICS__MULTIPROC_DIR=str(tmp_path / "metrics"),
        )
        worker = WorkerProcess(env, "audit-chaos", concurrency=2)
        client = Celery(
            broker=env["REMEDIATION_BROKER_URL"], backend=env["REMEDIATION_RESULT_BACKEND"]
        )
        try:
            worker.start()
            _run(cluster, client, worker, webhook, audit, spool)
        finally:
            worker.stop()
            client.close()
            if not cluster.answers():
                cluster.start()


def _run(
    cluster: Cluster,
    client: Celery,
    worker: WorkerProcess,
    webhook: WebhookReceiver,
    audit: str,
    spool: Path,
) -> None:
    sent: list[tuple[str, AsyncResult]] = []
    stop = threading.Event()
    tag = f"chaos-{time.time_ns()}"

    def send(n: int) -> None:
        if n % 3:
            kwargs = {"text": f"{tag} {n}", "incident": f"{tag}-{n}", "kind": "notice"}
            sent.append(("notify", client.send_task("remediation.act.notify", kwargs=kwargs)))
        else:
            result = client.send_task("remediation.check.host_disk", kwargs={"target": "self"})
            sent.append(("check", result))

    def stream() -> None:
        n = 0
        while not stop.is_set():
            send(n)
            n += 1
            time.sleep(0.05)

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    spooled_during: list[int] = []
    try:
        for _ in range(scale(1, 5)):
            time.sleep(1.0)
            cluster.stop()
            wait_for(lambda: spooled(spool), 20, 0.05, "audit rows spooled while down")
            time.sleep(1.5)
            spooled_during.append(len(sent))
            cluster.start()
            time.sleep(1.5)
    finally:
        stop.set()
        sender.join(10)
    for _, result in sent:
        result.get(timeout=120, propagate=False)
    failed = [(kind, r.id, r.state) for kind, r in sent if r.state != "SUCCESS"]
    assert failed == [], worker.log()[-3000:]
    wait_for(lambda: _drained(client, spool), 60, 0.5, "the worker to replay its spool")
    _assert_exactly_once(audit, sent)
    texts = [b.get("text", "") for b in webhook.bodies if tag in str(b.get("text", ""))]
    assert len(texts) == len(set(texts)) == sum(1 for kind, _ in sent if kind == "notify")
    assert len(spooled_during) == scale(1, 5)


def _drained(client: Celery, spool: Path) -> bool:
    """Any write replays the spool first: nudge both pool children until it is empty."""
    if not spooled(spool):
        return True
    for _ in range(4):
        client.send_task("remediation.check.host_disk", kwargs={"target": "self"})
    return False


def _assert_exactly_once(audit: str, sent: list[tuple[str, AsyncResult]]) -> None:
    notify = [r.id for kind, r in sent if kind == "notify"]
    checks = [r.id for kind, r in sent if kind == "check"]
    per_table = {
        "guard_decisions": notify,
        "action_runs": notify,
        "check_runs": checks,
    }
    for table, ids in per_table.items():
        found = rows(
            audit,
            f"SELECT task_id, count(*) AS n FROM {table} WHERE task_id = ANY(%s) GROUP BY task_id",
            ids,
        )
        assert {r["task_id"]: r["n"] for r in found} == dict.fromkeys(ids, 1), table
    unfinished = rows(
        audit,
        "SELECT count(*) AS n FROM check_runs WHERE task_id = ANY(%s) AND status <> 'ok'",
        checks,
    )
    assert unfinished[0]["n"] == 0
    outcomes = rows(
        audit,
        "SELECT outcome, count(*) AS n FROM action_runs WHERE task_id = ANY(%s) GROUP BY outcome",
        notify,
    )
    assert {r["outcome"]: r["n"] for r in outcomes} == {"succeeded": len(notify)}
