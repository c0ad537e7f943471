"""update_images (runbook 001 Monthly Operations 1, pull or rebuild, recreate, roll back)
against the real Docker engine, with images built from the busybox test image: a healthy
update recreates the service on the new image keeping its configuration; an unhealthy one
is rolled back to the previous image and stops the update; calls outside the configuration
are refused."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from remediation import cli
from remediation.actions.images import UpdateImagesParams, resolve_update, update_images
from remediation.clients.docker import PROJECT_LABEL
from remediation.context import ActionContext
from remediation.errors import Deferred, Refused
from remediation.findings import ActionResult
from remediation.guards import keys as guard_keys
from remediation.logging import get_logger
from remediation.security.image_update import tag_name
from remediation.security.images import read_record, record_key, registry_answers
from tests.support import images as img
from tests.support.docker_compose import DOCKER_URL, ComposeProject

WINDOW = "20"


@pytest.fixture
def refs(project: ComposeProject) -> Iterator[list[str]]:
    """Image names made by a test; removed (with the rollback tags) after its containers."""
    made: list[str] = []
    yield made
    for container in project.containers():
        container.remove(force=True)
    img.remove_images(project.dc, project.name, made, ["app", "web"])


def settings_for(settings_env: Any, project: ComposeProject, services: list[dict[str, Any]]) -> Any:
    return settings_env(
        REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
        REMEDIATION_CONTAINERS__PROJECT=project.name,
        REMEDIATION_IMAGES__SERVICES=json.dumps(services),
        REMEDIATION_IMAGES__REGISTRY_TIMEOUT_SECONDS="2",
        REMEDIATION_IMAGES__HEALTH_WINDOW_SECONDS=WINDOW,
        REMEDIATION_IMAGES__STABLE_SECONDS="1",
        REMEDIATION_IMAGES__ROLLBACK_REPOSITORY=img.ROLLBACK_REPOSITORY,
    )


def update(settings: Any, **kw: Any) -> ActionResult | Refused | Deferred:
    """The resolve step, then the action, as the runner calls them (without the guards)."""
    ctx = ActionContext(settings, get_logger())
    try:
        resolved = resolve_update(ctx, UpdateImagesParams(**kw))
        return update_images(dataclasses.replace(ctx, facts=resolved.facts), resolved.params)
    except (Refused, Deferred) as exc:
        return exc


def wait_healthy(project: ComposeProject, container: Any) -> None:
    from tests.support.base import wait_for

    def healthy() -> bool:
        container.reload()
        return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")

    wait_for(healthy, 30, 0.1, f"{container.name} to be healthy")


def service_ref(project: ComposeProject, service: str) -> str:
    """An image name in a registry that does not answer (a closed port on 127.0.0.1)."""
    return f"127.0.0.1:{img.closed_port()}/{project.name}/{service}:latest"


def test_a_healthy_update_recreates_the_service_on_the_new_image_keeping_its_configuration(
    settings_env: Any, r: redis.Redis, project: ComposeProject, refs: list[str], tmp_path: Path
) -> None:
    """Registry closed -> rebuilt from the context; the container is recreated under its
    name on the new image with its env, command, labels, network alias, bind mount and
    restart policy, but the new image's own healthcheck; healthy; the old container gone,
    the old image tagged :previous, the update recorded."""
    dc = project.dc
    ref = service_ref(project, "app")
    refs.append(ref)
    v1 = img.build(dc, ref, "v1", "/ok")
    net = project.network()
    (tmp_path / "data").mkdir()
    old = img.run_service(
        project,
        "app",
        ref,
        environment={"KEEP": "yes"},
        command=img.SERVE,
        labels={"owner": "shop"},
        network=net.name,
        volumes={str(tmp_path / "data"): {"bind": "/data", "mode": "ro"}},
        restart_policy={"Name": "unless-stopped"},
    )
    wait_healthy(project, old)
    # the new image checks another file: the old image's healthcheck must not be copied
    context = img.context(tmp_path / "v2", "v2", "/ok2")
    s = settings_for(settings_env, project, [{"service": "app", "build_context": str(context)}])

    result = update(s)

    assert isinstance(result, ActionResult), result
    app = result.detail["services"]["app"]
    assert (result.ok, app["result"], app["how"]) == (True, "updated", "built"), result
    assert any("did not answer" in n for n in app["notes"]), app["notes"]
    new = dc.containers.get(old.name)
    assert new.id != old.id and new.attrs["Image"] == app["image_id"] != v1.id
    assert new.attrs["State"]["Health"]["Status"] == "healthy"
    assert new.attrs["Config"]["Image"] == ref
    assert new.attrs["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "test -f /ok2"]
    assert "KEEP=yes" in new.attrs["Config"]["Env"] and new.attrs["Config"]["Cmd"] == img.SERVE
    assert new.attrs["Config"]["Labels"]["owner"] == "shop"
    assert new.attrs["Config"]["Labels"][PROJECT_LABEL] == project.name
    assert new.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert "app" in new.attrs["NetworkSettings"]["Networks"][net.name]["Aliases"]
    assert [(m["Source"], m["Destination"]) for m in new.attrs["Mounts"]] == [
        (str(tmp_path / "data"), "/data")
    ]
    assert new.exec_run(["cat", "/version"]).output.decode().strip() == "v2"
    assert [c.name for c in project.containers()] == [old.name]  # the old one removed
    previous = f"{tag_name(img.ROLLBACK_REPOSITORY, project.name, 'app')}:previous"
    assert dc.images.get(previous).id == v1.id
    record = read_record(r, project.name, "app")
    assert record is not None and record["image_id"] == app["image_id"]
    assert record["previous_image_id"] == v1.id
    assert [(f.action, f.params["kind"]) for f in result.follow_up] == [("notify", "image_update")]
    assert list(r.scan_iter("rem:lock:*")) == []  # the locks held during the update are released

    again = update(s)  # the same context builds the same image: nothing to recreate
    assert isinstance(again, ActionResult)
    assert again.detail["services"]["app"]["result"] == "current", again.detail
    assert dc.containers.get(old.name).id == new.id and again.changed is False


def test_the_images_command_lists_services_their_images_and_updates(
    settings_env: Any,
    r: redis.Redis,
    project: ComposeProject,
    refs: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`remediation images --json`: per configured service, its containers' health and
    image, the recorded update and the :previous tag; a service never updated is due."""
    dc = project.dc
    ref = service_ref(project, "app")
    refs.append(ref)
    img.build(dc, ref, "v1", "/ok")
    wait_healthy(project, img.run_service(project, "app", ref))
    settings_for(settings_env, project, [{"service": "app", "pull": False}, {"service": "web"}])
    assert cli.main(["images", "--json"]) == 0
    before = {row["service"]: row for row in json.loads(capsys.readouterr().out)}
    assert before["app"]["due"] == "never updated by update_images"
    assert (before["app"]["health"], before["web"]["due"]) == ("healthy", "no container")

    context = img.context(tmp_path / "v2", "v2", "/ok")
    s = settings_for(settings_env, project, [{"service": "app", "build_context": str(context)}])
    assert isinstance(update(s), ActionResult)
    assert cli.main(["images", "--json"]) == 0
    (after,) = json.loads(capsys.readouterr().out)
    assert (after["how"], after["due"], after["recorded"]) == ("built", "", after["image"])
    assert after["previous"].endswith(":previous")


def test_an_unhealthy_update_is_rolled_back_and_stops_the_update(
    settings_env: Any, r: redis.Redis, project: ComposeProject, refs: list[str], tmp_path: Path
) -> None:
    """The new image fails its healthcheck: the old container is back under its name on
    the old image and healthy, the image name points at the old image again, the rejected
    image keeps one tag, the next service is not touched, nothing is recorded, and the
    notice says it was rolled back."""
    dc = project.dc
    app_ref, web_ref = service_ref(project, "app"), service_ref(project, "web")
    refs.extend([app_ref, web_ref])
    v1 = img.build(dc, app_ref, "v1", "/ok")
    web_v1 = img.build(dc, web_ref, "web-v1", "/ok")
    old = img.run_service(project, "app", app_ref)
    web = img.run_service(project, "web", web_ref)
    wait_healthy(project, old)
    wait_healthy(project, web)
    bad = img.context(tmp_path / "bad", "v2", "/ok", has_file=False)
    good = img.context(tmp_path / "web2", "web-v2", "/ok")
    s = settings_for(
        settings_env,
        project,
        [
            {"service": "app", "build_context": str(bad)},
            {"service": "web", "build_context": str(good)},
        ],
    )

    result = update(s)

    assert isinstance(result, ActionResult), result
    app, rest = result.detail["services"]["app"], result.detail["services"]["web"]
    assert (result.ok, app["result"], rest["result"]) == (False, "rolled_back", "not_started")
    assert "unhealthy" in app["reason"], app
    back = dc.containers.get(old.name)
    assert back.id == old.id and back.attrs["Image"] == v1.id
    wait_healthy(project, back)
    assert dc.images.get(app_ref).id == v1.id
    rejected = f"{tag_name(img.ROLLBACK_REPOSITORY, project.name, 'app')}:rejected"
    assert dc.images.get(rejected).id == app["image_id"] != v1.id
    assert sorted(c.name for c in project.containers()) == sorted([old.name, web.name])
    assert dc.containers.get(web.name).id == web.id
    assert dc.containers.get(web.name).attrs["Image"] == web_v1.id
    assert r.exists(record_key(project.name, "app"), record_key(project.name, "web")) == 0
    notice = result.follow_up[0].params
    assert (notice["kind"], notice["severity"]) == ("image_rollback", "high")
    assert "app rolled back" in notice["text"] and "not updated" in notice["text"]


def test_a_service_that_is_not_healthy_beforehand_is_skipped(
    settings_env: Any, r: redis.Redis, project: ComposeProject, refs: list[str], tmp_path: Path
) -> None:
    """An unhealthy service is not updated (its rollback target would be broken): skipped,
    untouched, the result not ok."""
    dc = project.dc
    ref = service_ref(project, "app")
    refs.append(ref)
    img.build(dc, ref, "v1", "/ok", has_file=False)
    old = img.run_service(project, "app", ref)
    from tests.support.base import wait_for

    wait_for(
        lambda: (old.reload() or old.attrs["State"]["Health"]["Status"]) == "unhealthy",
        30,
        0.1,
        "the container to be unhealthy",
    )
    context = img.context(tmp_path / "v2", "v2", "/ok")
    s = settings_for(settings_env, project, [{"service": "app", "build_context": str(context)}])

    result = update(s)

    assert isinstance(result, ActionResult)
    assert (result.ok, result.detail["services"]["app"]["result"]) == (False, "skipped")
    assert dc.containers.get(old.name).id == old.id


def test_a_service_another_action_is_working_on_is_skipped_untouched(
    settings_env: Any, r: redis.Redis, project: ComposeProject, refs: list[str], tmp_path: Path
) -> None:
    """restart_container holding its lock on the service's container: the service is
    skipped (nothing built, nothing recreated), and the other action's lock is left as is."""
    dc = project.dc
    ref = service_ref(project, "app")
    refs.append(ref)
    v1 = img.build(dc, ref, "v1", "/ok")
    old = img.run_service(project, "app", ref)
    wait_healthy(project, old)
    theirs = guard_keys.lock("restart_container", f"docker/{old.name}")
    r.set(theirs, "their-token", ex=60)
    context = img.context(tmp_path / "v2", "v2", "/ok")
    s = settings_for(settings_env, project, [{"service": "app", "build_context": str(context)}])

    result = update(s)

    assert isinstance(result, ActionResult)
    app = result.detail["services"]["app"]
    assert (result.ok, app["result"]) == (False, "skipped") and theirs in app["reason"]
    assert dc.containers.get(old.name).id == old.id and dc.images.get(ref).id == v1.id
    assert [k.decode() for k in r.scan_iter("rem:lock:*")] == [theirs]
    assert r.get(theirs) == b"their-token"


def test_calls_outside_the_configuration_are_refused(
    settings_env: Any, r: redis.Redis, project: ComposeProject
) -> None:
    """No project, no services, a service or project not configured: refused before any
    change; hostile kwargs fail validation."""
    none = settings_env(REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL)
    assert isinstance(update(none), Refused)
    s = settings_for(settings_env, project, [])
    refused = update(s)
    assert isinstance(refused, Refused) and not refused.notice
    s = settings_for(settings_env, project, [{"service": "app", "pull": False}])
    assert "db" in update(s, services=["db"]).reason  # type: ignore[union-attr]
    assert isinstance(update(s, project="other"), Refused)
    ctx = ActionContext(s, get_logger())
    resolved = resolve_update(ctx, UpdateImagesParams(services=["app", "app"]))
    assert resolved.params.services == ["app"] and resolved.params.project == project.name
    for bad in ({"services": ["../x"]}, {"services": ["a"] * 33}, {"target": "self"}, {"x": 1}):
        with pytest.raises(ValidationError):
            UpdateImagesParams(**bad)


class _Registry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_registry_answers_when_it_speaks_http_and_not_when_its_port_is_closed() -> None:
    """Any HTTP answer on /v2/ (401 included) counts; a closed port is reported at once."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        answers, note = registry_answers(f"127.0.0.1:{port}/shop/web:1", 2)
        assert answers and "401" in note, note
    finally:
        server.shutdown()
        server.server_close()
    answers, note = registry_answers(f"127.0.0.1:{img.closed_port()}/shop/web", 2)
    assert not answers and "did not answer within 2s" in note, note
