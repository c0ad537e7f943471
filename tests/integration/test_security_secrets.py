"""Runbook 004 "Security Check Failures" (FA account ids in logs) end to end, real worker.

A secret planted in a rotating log is found once by log_secrets, quarantined and masked in
place by quarantine_log (verified: the check re-reads the leaking lines and they are clean),
the application's scrubbing flag is turned on by enable_log_scrubbing (comments kept,
backup kept) and, with no container configured, a human is asked to restart it. After
rotation nothing is reported again. No audit row, worker log line or notification holds
the secret. With APP_CONTAINER set (a real Docker engine), the next sweep hands the restart
to restart_container, which restarts the running container and is verified.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.docker_compose import DOCKER_URL, ComposeProject
from tests.support.env import process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.rabbitmq import Broker

# Redis databases of the session's server (apart from the other integration workers'), and
# on RabbitMQ vhosts numbered apart from the other modules' (access 13, images 14, ...).
STATE_DB, BROKER_SLOT = 14, 15
RESTART_STATE_DB, RESTART_BROKER_SLOT = 12, 13  # the worker that may restart a container
VHOST_OFFSET = 1300


def slot(broker: Broker, number: int) -> str:
    """The broker URL of this module's slot: a Redis db, or a vhost of its own."""
    return broker.url(number if broker.kind == "redis" else VHOST_OFFSET + number)


SECRETS = (
    "F7654321",
    "U2345678",
    "AKIAQ3EGRLZ5XK7TPW2M",
    "ghp_" + "Zq8" * 12,
    "hunter2-Tr0ub4dor",
    "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0",
)
NORMAL = "2026-11-28T01:00:00Z INFO order filled symbol=AAPL qty=10 status=200 took=12ms\n"
CONFIG = "# autotrader security\nibkr_fa_scrubbing: false  # the runbook turns this on\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Path:
    """A folder of this broker's run: logs, quarantine and the application's YAML."""
    return tmp_path_factory.mktemp(f"secrets_e2e_{broker.kind}")


@pytest.fixture(scope="module")
def secrets_env(
    broker: Broker, audit_db: str, webhook: WebhookReceiver, home: Path
) -> dict[str, str]:
    broker.redis.empty(STATE_DB)
    if broker.kind == "redis":
        broker.redis.empty(BROKER_SLOT)
    (home / "security.yaml").write_text(CONFIG)
    return process_env(
        broker.redis,
        audit_db,
        REMEDIATION_STATE_REDIS_URL=broker.redis.url(STATE_DB),
        REMEDIATION_BROKER_URL=slot(broker, BROKER_SLOT),
        REMEDIATION_NOTIFY__WEBHOOK_URL=webhook.url,
        REMEDIATION_VERIFY__ATTEMPTS="5",
        REMEDIATION_SECRETS__FILES=json.dumps([str(home / "logs" / "app.log*")]),
        REMEDIATION_SECRETS__QUARANTINE_DIR=str(home / "quarantine"),
        REMEDIATION_SECRETS__APP_CONFIG=str(home / "security.yaml"),
    )


@pytest.fixture(scope="module")
def secrets_worker(secrets_env: dict[str, str]) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(secrets_env, "secrets").start()
    yield worker
    worker.stop()


def sweep(client: Celery) -> None:
    client.send_task("remediation.check.log_secrets", kwargs={"target": "self"}).get(timeout=60)


def test_a_planted_secret_is_found_once_quarantined_masked_and_never_shown(
    secrets_env: dict[str, str],
    secrets_worker: WorkerProcess,
    audit_db: str,
    webhook: WebhookReceiver,
    home: Path,
) -> None:
    """Found once, quarantined (0700/0600 copy) and masked in the same inode with
    verification 'recovered'; scrubbing turned on (comment kept, backup kept) and a human
    asked to restart; after rotation nothing more is reported; the secrets appear in no
    audit row, no worker log line and no notification."""
    client = Celery(
        broker=secrets_env["REMEDIATION_BROKER_URL"],
        backend=secrets_env["REMEDIATION_RESULT_BACKEND"],
    )
    audit = Audit(audit_db)
    log = home / "logs" / "app.log"
    log.parent.mkdir()
    log.write_text(
        NORMAL * 50
        + f"INFO ibkr allocation fa={SECRETS[0]} account {SECRETS[1]}\n"
        + NORMAL * 10
        + f"DEBUG boto key {SECRETS[2]} token {SECRETS[3]}\n"
        + f"INFO db postgresql://bot:{SECRETS[4]}@db:5432/app\n"
        + f"DEBUG headers Authorization: Bearer {SECRETS[5]}\n"
        + NORMAL * 10
    )
    inode = os.stat(log).st_ino
    sweep(client)

    chain = audit.wait_rows(
        "SELECT a.action, a.verification, f.kind, f.incident_id, d.decision FROM action_runs a"
        " JOIN findings f ON f.id = a.finding_id JOIN guard_decisions d ON d.id = a.decision_id"
        " JOIN check_runs c ON c.id = f.check_run_id"
        " WHERE a.outcome = 'succeeded' AND a.verification = 'recovered' AND c.purpose = 'detect'"
        " AND a.action IN ('quarantine_log', 'enable_log_scrubbing') ORDER BY a.action",
        n=2,
    )
    assert [(r["action"], r["kind"], r["decision"]) for r in chain] == [
        ("enable_log_scrubbing", "log_scrubbing_off", "admitted"),
        ("quarantine_log", "log_secret_leaked", "admitted"),
    ]
    text = log.read_text()
    assert os.stat(log).st_ino == inode and not any(s in text for s in SECRETS)
    assert text.count("\n") == 74 and text.startswith(NORMAL) and "fa=********" in text
    (copy,) = [
        p
        for p in (home / "quarantine").iterdir()
        if p.name.startswith("app.log.") and not p.name.endswith(".json")
    ]
    assert all(s in copy.read_text() for s in SECRETS)  # the original, kept
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "quarantine").stat().st_mode) == 0o700
    config = (home / "security.yaml").read_text()
    assert "ibkr_fa_scrubbing: true" in config and "# the runbook turns this on" in config
    assert [p.read_text() for p in home.glob("security.yaml.*.bak")] == [CONFIG]
    wait_for(
        lambda: any("by hand" in json.dumps(b) for b in webhook.bodies), 30, 0.2, "restart asked"
    )

    with open(log, "a") as fh:
        fh.write(NORMAL * 5)
    os.rename(log, home / "logs" / "app.log.1")  # rotation: the glob still matches it
    log.write_text(NORMAL * 5)
    sweep(client)
    sweep(client)
    detected = audit.rows(
        "SELECT f.subject FROM findings f JOIN check_runs c ON c.id = f.check_run_id"
        " WHERE f.kind = 'log_secret_leaked' AND c.purpose = 'detect' AND f.subject LIKE %s",
        f"{home}/%",
    )
    assert [r["subject"] for r in detected] == [str(log)]  # found once, never again

    shown = audit.everything_as_text() + secrets_worker.log() + json.dumps(webhook.bodies)
    assert [s for s in SECRETS if s in shown] == []
    client.close()


def test_scrubbing_turned_on_then_the_running_app_container_restarted_by_the_playbook(
    broker: Broker, audit_db: str, webhook: WebhookReceiver, tmp_path: Path, project: ComposeProject
) -> None:
    """With APP_CONTAINER set: a leak turns scrubbing on, the next sweep finds the restart
    due and restart_container restarts the running container (verified 'recovered': the
    request is done); the container runs again, started anew."""
    app = project.run(["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"])
    before = project.started_at(app)
    broker.redis.empty(RESTART_STATE_DB)
    if broker.kind == "redis":
        broker.redis.empty(RESTART_BROKER_SLOT)
    (tmp_path / "security.yaml").write_text(CONFIG)
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    log.write_text(NORMAL + f"INFO ibkr allocation fa={SECRETS[0]}\n")
    env = process_env(
        broker.redis,
        audit_db,
        REMEDIATION_STATE_REDIS_URL=broker.redis.url(RESTART_STATE_DB),
        REMEDIATION_BROKER_URL=slot(broker, RESTART_BROKER_SLOT),
        REMEDIATION_NOTIFY__WEBHOOK_URL=webhook.url,
        REMEDIATION_VERIFY__ATTEMPTS="5",
        REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
        REMEDIATION_CONTAINERS__PROJECT=project.name,
        REMEDIATION_SECRETS__FILES=json.dumps([str(log)]),
        REMEDIATION_SECRETS__QUARANTINE_DIR=str(tmp_path / "quarantine"),
        REMEDIATION_SECRETS__APP_CONFIG=str(tmp_path / "security.yaml"),
        REMEDIATION_SECRETS__APP_CONTAINER=app.name,
    )
    worker = WorkerProcess(env, "secrets-restart").start()
    client = Celery(broker=env["REMEDIATION_BROKER_URL"], backend=env["REMEDIATION_RESULT_BACKEND"])
    audit = Audit(audit_db)
    try:
        sweep(client)
        audit.wait_rows(
            "SELECT 1 FROM action_runs WHERE action = 'enable_log_scrubbing'"
            " AND result->'detail'->>'file' = %s AND verification = 'recovered'",
            str(tmp_path / "security.yaml"),
        )
        sweep(client)
        (run,) = audit.wait_rows(
            "SELECT a.outcome, a.verification, f.kind, d.decision FROM action_runs a"
            " JOIN findings f ON f.id = a.finding_id JOIN guard_decisions d ON d.id = a.decision_id"
            " WHERE a.action = 'restart_container' AND a.resource = %s AND a.verification IS NOT NULL"
            " AND a.verification <> 'skipped'",
            f"docker/{app.name}",
        )
        assert run == {
            "outcome": "succeeded",
            "verification": "recovered",
            "kind": "log_scrubbing_restart_due",
            "decision": "admitted",
        }
        assert project.status(app) == "running" and project.started_at(app) != before
        assert SECRETS[0] not in audit.everything_as_text() + worker.log()
    finally:
        client.close()
        worker.stop()
