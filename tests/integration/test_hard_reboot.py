"""The hard reboot (runbook 000 Docker Management step 4) through a real worker on a real
Docker engine: a container stuck in a state its restarts keep (a marker file in its own
writable layer makes it exit at start) is restarted, given up on, then recreated by
recreate_service, which clears the marker with the writable layer; verified by the check.
Once per window: stuck again and given up again inside the cooldown, it is not recreated.
With the option off, the give-up notice is all that happens. Beat's role is played by the
test sending the check; each sweep waits until the worker has settled what it dispatched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery
from psycopg.rows import dict_row

from remediation.restarts import state_key
from tests.support.base import wait_for
from tests.support.docker_compose import DOCKER_URL, ComposeProject
from tests.support.env import process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database

STUCK = ["sh", "-c", "[ -e /stuck ] && exit 1; trap 'exit 0' TERM; while true; do sleep 0.1; done"]
ACTIONS = ("restart_container", "recreate_service")
MAX_SWEEPS = 6
"""More sweeps than the decisions below need: a missing step fails, it is never waited out."""


@pytest.fixture(scope="module")
def reboot_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def reboot_audit(pg_admin: str) -> Iterator[str]:
    with scratch_database(pg_admin, "rem_reboot") as dsn:
        yield as_url(dsn)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def make_stuck(project: ComposeProject, container: Any) -> None:
    """Write the marker into the container's own layer and stop it: it now exits at start."""
    project.wait_status(container, "running")
    assert container.exec_run(["sh", "-c", ": > /stuck"]).exit_code == 0
    container.kill()
    project.wait_status(container, "exited")


def rows(audit: str) -> list[dict[str, Any]]:
    with psycopg.connect(audit, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT d.action, d.decision, d.guard, d.resource, a.outcome, a.verification,"
            " a.error FROM guard_decisions d LEFT JOIN action_runs a ON a.decision_id = d.id"
            " WHERE d.action = ANY(%s) ORDER BY d.id",
            (list(ACTIONS),),
        ).fetchall()


def settled(audit: str, count: int) -> bool:
    """At least count decisions, every admitted one finished and verified (or skipped)."""
    seen = rows(audit)
    return len(seen) >= count and all(
        r["decision"] != "admitted" or (r["outcome"] is not None and r["verification"])
        for r in seen
    )


class Sweeps:
    """The check sent as beat would, each sweep waited on until its actions are done."""

    def __init__(self, env: dict[str, str], audit: str) -> None:
        self.client = Celery(
            broker=env["REMEDIATION_BROKER_URL"], backend=env["REMEDIATION_RESULT_BACKEND"]
        )
        self.audit = audit

    def sweep(self) -> dict[str, Any]:
        before = len(rows(self.audit))
        out: dict[str, Any] = self.client.send_task(
            "remediation.check.docker_containers", kwargs={}
        ).get(timeout=60)
        expected = before + int(out["dispatched"])
        wait_for(lambda: settled(self.audit, expected), 120, 0.2, "the sweep's actions")
        return out

    def until(self, action: str, decision: str) -> dict[str, Any]:
        """Sweep until a decision of action appears; that decision's row."""
        for _ in range(MAX_SWEEPS):
            self.sweep()
            mine = [r for r in rows(self.audit) if r["action"] == action]
            if mine and mine[-1]["decision"] == decision:
                return mine[-1]
        raise AssertionError(rows(self.audit))

    def close(self) -> None:
        self.client.close()


def worker_env(
    server: RedisServer, audit: str, project: ComposeProject, hook: str, on: bool
) -> dict[str, str]:
    return process_env(
        server,
        audit,
        REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
        REMEDIATION_CONTAINERS__PROJECT=project.name,
        REMEDIATION_CONTAINERS__FLAP_MAX_RESTARTS="1",
        REMEDIATION_CONTAINERS__RESTART_BACKOFF_BASE_SECONDS="1",
        REMEDIATION_CONTAINERS__HARD_REBOOT="true" if on else "false",
        REMEDIATION_CONTAINERS__HARD_REBOOT_WAIT_SECONDS="30",
        REMEDIATION_NOTIFY__WEBHOOK_URL=hook,
        REMEDIATION_VERIFY__DELAY_SECONDS="0.5",
        REMEDIATION_POSTGRES__DATA_QUALITY="[]",
    )


def test_a_service_stuck_after_its_give_up_is_recreated_once_per_window_and_verified(
    reboot_redis: RedisServer,
    reboot_audit: str,
    webhook: WebhookReceiver,
    project: ComposeProject,
) -> None:
    """Restart, give-up, then one hard reboot that recovers (verified, restart state cleared,
    operators told); stuck and given up again inside the hour, it is not recreated again."""
    reboot_redis.empty(0)
    state = redis.Redis.from_url(reboot_redis.url(0))
    env = worker_env(reboot_redis, reboot_audit, project, webhook.url, on=True)
    worker = WorkerProcess(env, "reboot").start()
    sweeps = Sweeps(env, reboot_audit)
    try:
        app = project.run(STUCK)
        make_stuck(project, app)
        sweeps.until("restart_container", "admitted")  # restarted: exits again at once
        gave_up = sweeps.until("restart_container", "admitted")
        assert (gave_up["outcome"], "left alone" in gave_up["error"]) == ("failed", True)
        assert project.dc.containers.get(app.name).id == app.id

        reboot = sweeps.until("recreate_service", "admitted")
        new = project.dc.containers.get(app.name)
        assert (reboot["outcome"], reboot["verification"]) == ("succeeded", "recovered"), reboot
        assert new.id != app.id and project.status(new) == "running"
        assert state.exists(state_key(app.name)) == 0
        assert reboot["resource"] == f"docker/service/{project.service}"

        make_stuck(project, new)
        sweeps.until("restart_container", "admitted")
        again = sweeps.until("restart_container", "admitted")
        assert again["outcome"] == "failed", again
        within = sweeps.until("recreate_service", "suppressed")
        assert within["guard"] == "cooldown", within
        assert project.dc.containers.get(app.name).id == new.id
        assert project.status(new) == "exited"
        wait_for(
            lambda: any(b["kind"] == "hard_reboot" for b in webhook.bodies),
            30,
            0.1,
            "the hard-reboot notice",
        )
    finally:
        sweeps.close()
        worker.stop()
        state.close()

    reboots = [r for r in rows(reboot_audit) if r["action"] == "recreate_service"]
    assert [(r["decision"], r["outcome"]) for r in reboots] == [
        ("admitted", "succeeded"),
        ("suppressed", None),
    ]
    notices = [b for b in webhook.bodies if b["kind"] == "hard_reboot"]
    assert len(notices) == 1 and project.name in notices[0]["text"], notices


def test_with_the_option_off_only_the_give_up_notice_is_sent(
    reboot_redis: RedisServer,
    reboot_audit: str,
    webhook: WebhookReceiver,
    project: ComposeProject,
) -> None:
    """Off: after the give-up, sweeps report container_given_up, ask for no hard reboot and no
    further restart; the container stays as it is; the one notice is the give-up's."""
    reboot_redis.empty(0)
    state = redis.Redis.from_url(reboot_redis.url(0))
    env = worker_env(reboot_redis, reboot_audit, project, webhook.url, on=False)
    worker = WorkerProcess(env, "reboot-off").start()
    sweeps = Sweeps(env, reboot_audit)
    try:
        app = project.run(STUCK)
        make_stuck(project, app)
        sweeps.until("restart_container", "admitted")
        gave_up = sweeps.until("restart_container", "admitted")
        assert gave_up["outcome"] == "failed", gave_up
        decided = len(rows(reboot_audit))
        later = [sweeps.sweep() for _ in range(2)]
        wait_for(lambda: len(webhook.bodies) >= 1, 30, 0.1, "the give-up notice")
    finally:
        sweeps.close()
        worker.stop()
        state.close()

    assert [out["dispatched"] for out in later] == [0, 0]
    assert len(rows(reboot_audit)) == decided
    assert project.dc.containers.get(app.name).id == app.id
    assert project.status(app) == "exited"
    with psycopg.connect(reboot_audit, row_factory=dict_row) as conn:
        kinds = conn.execute(
            "SELECT f.kind FROM findings f JOIN check_runs c ON c.id = f.check_run_id"
            " WHERE c.purpose = 'detect' ORDER BY f.id DESC LIMIT 2"
        ).fetchall()
    assert [k["kind"] for k in kinds] == ["container_given_up", "container_given_up"]
    assert [b["kind"] for b in webhook.bodies if app.name in b["text"]] == ["action_failed"]
