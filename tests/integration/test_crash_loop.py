"""A real crash-looping container under the shipped schedule's spacing, time compressed 5x.

Default: one docker_containers sweep a minute, back-off 10 s doubling to 300 s, give-up after
5 restarts in 600 s, flap guard 6 runs in 30 min, blast radius 5 restarts per 600 s. Here
every one of those is divided by 5 together (sweep 12 s, back-off 2 s to 60 s, give-up window
120 s, flap window 6 min, blast window 120 s), so the sequence of decisions is the one the
default schedule gives, in a fifth of the time: restarts at sweeps 0-3 (back-off 2, 4, 8,
16 s), sweep 4 lands inside the 16 s back-off (deferred), and the worker's recheck at the
back-off's end restarts it the fifth time (not sweep 5); sweep 5 gives up (5 restarts in the
window); later sweeps report container_given_up and ask for no restart (the hard reboot is
off by default). One real worker, beat's role played by
the test sending the check on the sweep spacing (issue 10, reproduction 8).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery
from psycopg.rows import dict_row

from tests.support.base import wait_for
from tests.support.docker_compose import DOCKER_URL, ComposeProject
from tests.support.env import process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database

SCALE = 5
SWEEP_SECONDS = 60 / SCALE
CRASH = ["sh", "-c", "sleep 0.2; exit 1"]
EXPECTED = [
    ("admitted", "succeeded"),  # sweep 0: restart 1, back-off 2 s
    ("admitted", "succeeded"),  # sweep 1: restart 2, back-off 4 s
    ("admitted", "succeeded"),  # sweep 2: restart 3, back-off 8 s
    ("admitted", "succeeded"),  # sweep 3: restart 4, back-off 16 s
    ("deferred", None),  # sweep 4: 12 s later, inside the 16 s back-off
    ("admitted", "succeeded"),  # the recheck at the back-off's end: restart 5
    ("admitted", "failed"),  # sweep 5: 5 restarts in the window: left alone, escalated
]
AFTER_GIVE_UP = 2
"""Sweeps after the give-up: container_given_up, nothing dispatched."""


@pytest.fixture(scope="module")
def loop_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loop_audit(pg_admin: str) -> Iterator[str]:
    with scratch_database(pg_admin, "rem_loop") as dsn:
        yield as_url(dsn)


@pytest.fixture(scope="module")
def loop_webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def decisions(audit: str, name: str) -> list[dict[str, Any]]:
    with psycopg.connect(audit, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT d.decision, a.outcome, d.reason, a.error, c.cause FROM guard_decisions d"
            " LEFT JOIN action_runs a ON a.decision_id = d.id"
            " LEFT JOIN findings f ON f.id = d.finding_id"
            " LEFT JOIN check_runs c ON c.id = f.check_run_id"
            " WHERE d.action = 'restart_container' AND d.resource = %s ORDER BY d.decided_at",
            (f"docker/{name}",),
        ).fetchall()


def test_crash_loop_on_the_default_spacing_restarts_defers_gives_up_and_escalates_once(
    loop_redis: RedisServer,
    loop_audit: str,
    loop_webhook: WebhookReceiver,
    project: ComposeProject,
) -> None:
    """Restarts follow the back-off, the give-up comes after the configured count with exactly
    one escalation and no restart after it; the sweep inside the back-off is audited as
    deferred, never as a duplicate of a finished fix."""
    env = process_env(
        loop_redis,
        loop_audit,
        REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
        REMEDIATION_CONTAINERS__PROJECT=project.name,
        REMEDIATION_CONTAINERS__RESTART_BACKOFF_BASE_SECONDS=str(10 // SCALE),
        REMEDIATION_CONTAINERS__RESTART_BACKOFF_MAX_SECONDS=str(300 // SCALE),
        REMEDIATION_CONTAINERS__FLAP_WINDOW_SECONDS=str(600 // SCALE),
        REMEDIATION_GUARDS__FLAP_WINDOW_MINUTES=str(30 // SCALE),
        REMEDIATION_GUARDS__FLAP_SUSPEND_MINUTES=str(120 // SCALE),
        REMEDIATION_GUARDS__INCIDENT_TTL_SECONDS=str(3600 // SCALE),
        REMEDIATION_GUARDS__BLAST_RADIUS=json.dumps(
            {"restart_container": {"units": 5, "window_seconds": 600 // SCALE}}
        ),
        REMEDIATION_NOTIFY__WEBHOOK_URL=loop_webhook.url,
        REMEDIATION_NOTIFY__WINDOW_SECONDS=str(3600 // SCALE),
        REMEDIATION_VERIFY__DELAY_SECONDS=str(1 / SCALE),
        REMEDIATION_POSTGRES__DATA_QUALITY="[]",
    )
    worker = WorkerProcess(env, "loop").start()
    client = Celery(broker=env["REMEDIATION_BROKER_URL"], backend=env["REMEDIATION_RESULT_BACKEND"])
    try:
        app = project.run(CRASH)
        project.wait_status(app, "exited")
        start = time.monotonic()
        for sweep in range(len(EXPECTED)):
            time.sleep(max(start + sweep * SWEEP_SECONDS - time.monotonic(), 0))
            client.send_task("remediation.check.docker_containers", kwargs={})
            wait_for(
                lambda n=sweep: len(decisions(loop_audit, app.name)) > n,
                SWEEP_SECONDS,
                0.1,
                f"the decision of sweep {sweep}",
            )
        try:
            wait_for(
                lambda: decisions(loop_audit, app.name)[6]["outcome"] is not None,
                SWEEP_SECONDS,
                0.1,
                "the give-up's outcome",
            )
        except TimeoutError:
            raise AssertionError(decisions(loop_audit, app.name)) from None
        later = [
            client.send_task("remediation.check.docker_containers", kwargs={}).get(
                timeout=SWEEP_SECONDS
            )
            for _ in range(AFTER_GIVE_UP)
        ]
        gave_up_started = project.started_at(app)
        rows = decisions(loop_audit, app.name)
        time.sleep(1)  # any notification is sent by then (the worker is idle)
    finally:
        client.close()
        worker.stop()

    assert [(r["decision"], r["outcome"]) for r in rows] == EXPECTED, rows
    assert "backing off" in rows[4]["reason"]
    assert rows[5]["cause"]["kind"] == "deferred", rows[5]  # the recheck, not a sweep
    assert [r["cause"] for r in rows[:5]] == [None] * 5  # sweeps sent by hand: no header
    assert "left alone" in rows[6]["error"]
    assert [out["dispatched"] for out in later] == [0] * AFTER_GIVE_UP, later
    kinds = [f["kind"] for out in later for f in out["findings"]]
    assert kinds == ["container_given_up"] * AFTER_GIVE_UP, later
    assert project.started_at(app) == gave_up_started and project.status(app) == "exited"
    mine = [b for b in loop_webhook.bodies if app.name in b["text"]]
    assert [b["kind"] for b in mine] == ["action_failed"], mine
