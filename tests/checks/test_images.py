"""image_updates (runbook 001 Monthly Operations 1) against the real Docker engine: due when
never updated, updated too long ago, or not running healthy on the recorded image; current
otherwise; a configured service without a container and an engine that does not answer are
reported, never a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from remediation import playbook
from remediation.checks.images import ImageUpdatesParams, image_updates
from remediation.clients import docker as docker_client
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import get_logger
from remediation.security.images import now, write_record
from tests.support import images as img
from tests.support.base import wait_for
from tests.support.docker_compose import DOCKER_URL, ComposeProject


@pytest.fixture
def refs(project: ComposeProject) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for container in project.containers():
        container.remove(force=True)
    img.remove_images(project.dc, project.name, made, [])


def run(settings: Any) -> list[Finding]:
    return image_updates(CheckContext(settings, get_logger()), ImageUpdatesParams())


def configure(settings_env: Any, project: ComposeProject, *services: str, **extra: str) -> Any:
    env = {
        "REMEDIATION_CONTAINERS__DOCKER_URL": DOCKER_URL,
        "REMEDIATION_CONTAINERS__PROJECT": project.name,
        "REMEDIATION_IMAGES__SERVICES": json.dumps([{"service": s} for s in services]),
        **extra,
    }
    return settings_env(**env)


def test_unconfigured_is_one_info_finding(settings_env: Any) -> None:
    """Without a project or services, the check says how to configure it and asks nothing."""
    (finding,) = run(settings_env())
    assert (finding.kind, finding.severity) == ("image_updates_unconfigured", "info")
    assert playbook.rules_for(finding) == []


def test_due_when_never_updated_then_current_once_recorded_then_due_again_with_age(
    settings_env: Any, r: redis.Redis, project: ComposeProject, refs: list[str]
) -> None:
    """Never updated: due (info) and the playbook asks update_images for that service; with
    a record of the image it runs, healthy: nothing; the record aged past the interval, or
    naming another image: due again (warning for the other image)."""
    s = configure(settings_env, project, "app")
    ref = f"{project.name}/app:latest"
    refs.append(ref)
    image = img.build(project.dc, ref, "v1", "/ok")
    app = img.run_service(project, "app", ref)
    wait_for(
        lambda: (app.reload() or app.attrs["State"]["Health"]["Status"]) == "healthy",
        30,
        0.1,
        "healthy",
    )

    (due,) = run(s)
    assert (due.kind, due.severity, due.subject) == ("image_update_due", "info", project.name)
    assert due.evidence["services"] == {"app": ["never updated by update_images"]}
    (rule,) = playbook.rules_for(due)
    assert (rule.action, rule.params(due)) == (
        "update_images",
        {"target": "docker", "services": ["app"]},
    )

    write_record(r, project.name, "app", {"image_id": image.id, "updated_at": now(r)})
    assert run(s) == []

    write_record(r, project.name, "app", {"image_id": image.id, "updated_at": now(r) - 26 * 86400})
    (aged,) = run(s)
    assert aged.severity == "info" and "26 days ago" in aged.evidence["services"]["app"][0]

    write_record(r, project.name, "app", {"image_id": "sha256:other", "updated_at": now(r)})
    (drift,) = run(s)
    assert drift.severity == "warning" and "not the recorded image" in drift.summary


def test_a_service_without_containers_and_a_dead_engine_are_reported(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """A configured service with no container is image_service_missing (notify); an engine
    that does not answer is docker_unreachable."""
    s = configure(settings_env, project, "app", "ghost")
    project.run(["sleep", "60"])  # a container of service "app"
    kinds = sorted((f.kind, f.subject) for f in run(s))
    assert kinds == [("image_service_missing", "ghost"), ("image_update_due", project.name)]
    missing = next(f for f in run(s) if f.kind == "image_service_missing")
    assert [rule.action for rule in playbook.rules_for(missing)] == ["notify"]

    docker_client.reset()
    dead = configure(
        settings_env,
        project,
        "app",
        REMEDIATION_CONTAINERS__DOCKER_URL="unix:///nonexistent/docker.sock",
    )
    (finding,) = run(dead)
    assert (finding.kind, finding.severity) == ("docker_unreachable", "high")
    docker_client.reset()
