"""Image updates (runbook 001 "Monthly Operations 1. Security Updates") end to end through a
real worker on the real Docker engine: the image_updates check finds two services due, the
playbook sends update_images, which cannot reach the registry (a closed port on 127.0.0.1),
rebuilds both from their contexts, recreates them on the new images, and the check verifies
them (recovered). A month later the first service's new image fails its healthcheck: it is
rolled back to the image it ran, the second service is left untouched, the action fails
and operators are told. Beat's role is played by the test sending the check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from remediation.security.images import record_key
from tests.support import images as img
from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.docker_compose import DOCKER_URL, ComposeProject
from tests.support.env import process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.rabbitmq import Broker
from tests.support.services import RedisServer

BROKER_SLOT = 14
"""This module's RabbitMQ vhost slot; on Redis it has a Redis server of its own."""
CHAIN = (
    "SELECT c.purpose, f.kind, f.evidence, d.decision, a.outcome, a.verification, a.result,"
    " a.error FROM action_runs a JOIN guard_decisions d ON d.id = a.decision_id"
    " JOIN findings f ON f.id = d.finding_id JOIN check_runs c ON c.id = f.check_run_id"
    " WHERE a.action = 'update_images' AND f.evidence->>'project' = %s ORDER BY a.id"
)


@pytest.fixture(scope="module")
def images_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def refs(project: ComposeProject) -> Iterator[list[str]]:
    """Image names the test made; removed (with the rollback tags) after its containers."""
    made: list[str] = []
    yield made
    for container in project.containers():
        container.remove(force=True)
    img.remove_images(project.dc, project.name, made, ["app", "web"])


def worker_env(
    broker: Broker,
    own: RedisServer,
    audit_db: str,
    project: ComposeProject,
    hook: str,
    contexts: dict[str, Path],
) -> dict[str, str]:
    services = [{"service": name, "build_context": str(path)} for name, path in contexts.items()]
    return process_env(
        own,
        audit_db,
        REMEDIATION_BROKER_URL=own.url(1) if broker.kind == "redis" else broker.url(BROKER_SLOT),
        REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
        REMEDIATION_CONTAINERS__PROJECT=project.name,
        REMEDIATION_IMAGES__SERVICES=json.dumps(services),
        REMEDIATION_IMAGES__REGISTRY_TIMEOUT_SECONDS="2",
        REMEDIATION_IMAGES__HEALTH_WINDOW_SECONDS="30",
        REMEDIATION_IMAGES__STABLE_SECONDS="1",
        REMEDIATION_IMAGES__ROLLBACK_REPOSITORY=img.ROLLBACK_REPOSITORY,
        # the month between the two updates passes in the test: no week-long cooldown
        REMEDIATION_GUARDS__COOLDOWN_OVERRIDES='{"update_images": 0}',
        REMEDIATION_NOTIFY__WEBHOOK_URL=hook,
        REMEDIATION_VERIFY__DELAY_SECONDS="0.5",
        REMEDIATION_POSTGRES__DATA_QUALITY="[]",
    )


def healthy(project: ComposeProject, name: str) -> Any:
    """The container named name, once its healthcheck says healthy."""

    def check() -> Any:
        c = project.dc.containers.get(name)
        return c if c.attrs["State"].get("Health", {}).get("Status") == "healthy" else None

    return wait_for(check, 30, 0.1, f"{name} to be healthy")


def a_month_passes(state: redis.Redis, project: str, *services: str) -> None:
    """Age the recorded updates by 30 days, as the next monthly run would find them."""
    for service in services:
        record = json.loads(state.get(record_key(project, service)) or "{}")
        record["updated_at"] -= 30 * 86400
        state.set(record_key(project, service), json.dumps(record))


def test_monthly_update_then_a_rollback_through_a_real_worker(
    broker: Broker,
    images_redis: RedisServer,
    audit_db: str,
    webhook: WebhookReceiver,
    project: ComposeProject,
    refs: list[str],
    tmp_path: Path,
) -> None:
    """Due -> rebuilt (registry closed) -> recreated -> verified recovered; a month later an
    unhealthy image -> rolled back, the other service untouched, failed, escalated."""
    images_redis.empty(0)
    dc = project.dc
    port = img.closed_port()
    app_ref = f"127.0.0.1:{port}/{project.name}/app:latest"
    web_ref = f"127.0.0.1:{port}/{project.name}/web:latest"
    refs.extend([app_ref, web_ref])
    v1 = {
        "app": img.build(dc, app_ref, "app-v1", "/ok"),
        "web": img.build(dc, web_ref, "web-v1", "/ok"),
    }
    refs.extend(image.id for image in v1.values())  # untagged once :previous moves on
    app = img.run_service(project, "app", app_ref)
    web = img.run_service(project, "web", web_ref)
    healthy(project, app.name)
    healthy(project, web.name)
    contexts = {
        "app": img.context(tmp_path / "app", "app-v2", "/ok"),
        "web": img.context(tmp_path / "web", "web-v2", "/ok"),
    }
    env = worker_env(broker, images_redis, audit_db, project, webhook.url, contexts)
    state = redis.Redis.from_url(env["REMEDIATION_STATE_REDIS_URL"])
    worker = WorkerProcess(env, "images").start()
    client = Celery(broker=env["REMEDIATION_BROKER_URL"], backend=env["REMEDIATION_RESULT_BACKEND"])
    audit = Audit(audit_db)

    def sweep(n: int) -> dict[str, Any]:
        out: dict[str, Any] = client.send_task(
            "remediation.check.image_updates", kwargs={"target": "docker"}
        ).get(timeout=60)
        assert out["dispatched"] == 1, out
        rows = audit.wait_rows(CHAIN, project.name, n=n, timeout=240)
        wait_for(
            lambda: audit.rows(CHAIN, project.name)[n - 1]["verification"] is not None,
            120,
            0.3,
            "the update's verification",
        )
        return audit.rows(CHAIN, project.name)[n - 1] if rows else {}

    try:
        first = sweep(1)
        updated = {n: healthy(project, c.name) for n, c in (("app", app), ("web", web))}

        a_month_passes(state, project.name, "app", "web")
        img.context(tmp_path / "app", "app-v3", "/ok", has_file=False)  # fails its healthcheck
        second = sweep(2)
        after = {n: healthy(project, c.name) for n, c in (("app", app), ("web", web))}
        wait_for(
            lambda: any(b["kind"] == "image_rollback" for b in webhook.bodies),
            30,
            0.1,
            "the rollback notice",
        )
    finally:
        client.close()
        worker.stop()
        state.close()

    assert (first["purpose"], first["kind"], first["decision"]) == (
        "detect",
        "image_update_due",
        "admitted",
    )
    assert sorted(first["evidence"]["services"]) == ["app", "web"]
    assert (first["outcome"], first["verification"]) == ("succeeded", "recovered"), first
    services = first["result"]["detail"]["services"]
    for name in ("app", "web"):
        assert services[name]["result"] == "updated" and services[name]["how"] == "built"
        assert any("did not answer" in note for note in services[name]["notes"])
        assert updated[name].attrs["Image"] == services[name]["image_id"] != v1[name].id
        assert updated[name].exec_run(["cat", "/version"]).output.decode().strip() == f"{name}-v2"

    assert (second["kind"], second["decision"]) == ("image_update_due", "admitted")
    assert (second["outcome"], second["verification"]) == ("failed", "skipped"), second
    report = second["result"]["detail"]["services"]
    assert (report["app"]["result"], report["web"]["result"]) == ("rolled_back", "not_started")
    assert after["app"].id == updated["app"].id  # the old container, back under its name
    assert after["app"].attrs["Image"] == services["app"]["image_id"]
    assert after["web"].id == updated["web"].id
    assert dc.images.get(app_ref).id == services["app"]["image_id"]
    rollback = [b for b in webhook.bodies if b["kind"] == "image_rollback"]
    assert project.name in rollback[-1]["text"] and "app rolled back" in rollback[-1]["text"]
    assert any(
        b["kind"] == "action_failed" and project.name in b["text"] for b in webhook.bodies
    ), webhook.bodies
