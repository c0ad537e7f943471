"""The image update's pure parts: what a recreated container keeps from the old one and
what it takes from the new image, a compose file's build section, when a service is due,
and the rollback tag's name."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from remediation.security.image_update import rebase_config, tag_name
from remediation.security.images import build_source, due_reasons
from remediation.settings import ImageSettings
from remediation.settings.images import ImageService

IMAGE_CONFIG = {
    "Env": ["PATH=/bin", "MODE=image"],
    "Cmd": ["serve"],
    "Healthcheck": {"Test": ["CMD-SHELL", "test -f /ok"]},
    "Labels": {"maintainer": "x"},
    "WorkingDir": "/app",
}


class _Images:
    def get(self, ref: str) -> Any:
        return SimpleNamespace(attrs={"Config": IMAGE_CONFIG})


def old_container(**config: Any) -> dict[str, Any]:
    return {
        "Id": "a" * 64,
        "Image": "sha256:old",
        "Config": {
            "Hostname": "aaaaaaaaaaaa",
            "Image": "shop/web:latest",
            "Env": ["PATH=/bin", "MODE=image", "KEEP=yes"],
            "Cmd": ["serve"],
            "Healthcheck": {"Test": ["CMD-SHELL", "test -f /ok"]},
            "Labels": {"maintainer": "x", "com.docker.compose.service": "web"},
            "WorkingDir": "/app",
            **config,
        },
        "HostConfig": {"NetworkMode": "bridge", "RestartPolicy": {"Name": "always"}},
        "Mounts": [
            {"Type": "volume", "Name": "anon1", "Destination": "/data"},
            {"Type": "bind", "Source": "/srv", "Destination": "/srv"},
        ],
        "NetworkSettings": {"Networks": {}},
    }


def test_a_recreated_container_keeps_its_own_settings_and_takes_the_new_images_defaults() -> None:
    """Env, labels and host settings the container was given are kept; what it only
    inherited from the old image (ENV, CMD, HEALTHCHECK, labels, working dir) is left to
    the new image; anonymous volumes are mounted again at the same place."""
    dc = SimpleNamespace(images=_Images())
    config = rebase_config(dc, old_container(), "web", "shop/web:latest")
    assert config["Image"] == "shop/web:latest"
    assert config["Env"] == ["KEEP=yes"]
    assert "Cmd" not in config and "Healthcheck" not in config and "WorkingDir" not in config
    assert "maintainer" not in config["Labels"]
    assert config["Labels"]["com.docker.compose.service"] == "web"
    assert config["HostConfig"]["RestartPolicy"] == {"Name": "always"}
    assert config["HostConfig"]["Binds"] == ["anon1:/data"]


def test_a_command_or_healthcheck_set_on_the_container_is_kept() -> None:
    """Values that differ from the old image's were set by compose: they stay."""
    dc = SimpleNamespace(images=_Images())
    own = {"Cmd": ["worker"], "Healthcheck": {"Test": ["NONE"]}}
    config = rebase_config(dc, old_container(**own), "web", "sha256:new")
    assert config["Cmd"] == ["worker"] and config["Healthcheck"] == {"Test": ["NONE"]}


def test_compose_build_sections_are_read_and_variables_refused(tmp_path: Path) -> None:
    """A build string, a build mapping with dockerfile and args, no build section, and a
    section with ${VAR} (not interpolated: refused)."""
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n"
        "  web:\n    build: ./web\n"
        "  api:\n    build:\n      context: api\n      dockerfile: Dockerfile.prod\n"
        "      args: [VERSION=2]\n"
        "  db:\n    image: postgres\n"
        "  env:\n    build: ${CONTEXT}\n"
    )
    cfg = ImageSettings(compose_file=compose)
    web, _ = build_source(cfg, ImageService(service="web"), [])
    assert web == {"path": str(tmp_path / "web"), "dockerfile": "Dockerfile", "buildargs": {}}
    api, _ = build_source(cfg, ImageService(service="api"), [])
    assert api is not None and api["dockerfile"] == "Dockerfile.prod"
    assert api["buildargs"] == {"VERSION": "2"}
    assert build_source(cfg, ImageService(service="db"), [])[0] is None
    none, why = build_source(cfg, ImageService(service="env"), [])
    assert none is None and "variables" in why
    labelled = SimpleNamespace(
        labels={
            "com.docker.compose.project.config_files": "docker-compose.yml",
            "com.docker.compose.project.working_dir": str(tmp_path),
        }
    )
    found, where = build_source(ImageSettings(), ImageService(service="web"), [labelled])
    assert found is not None and str(compose) in where


def test_a_configured_context_wins_and_a_dockerfile_outside_it_is_refused(tmp_path: Path) -> None:
    """build_context + dockerfile are used as configured; ../ in dockerfile is invalid."""
    svc = ImageService(service="web", build_context=tmp_path, dockerfile="d/Dockerfile")
    found, _ = build_source(ImageSettings(), svc, [])
    assert found == {"path": str(tmp_path), "dockerfile": "d/Dockerfile", "buildargs": {}}
    with pytest.raises(ValueError, match="inside build_context"):
        ImageService(service="web", dockerfile="../Dockerfile")


def _container(image: str, health: str | None = "healthy") -> Any:
    state = {"Health": {"Status": health}} if health else {}
    return SimpleNamespace(name="c1", status="running", attrs={"Image": image, "State": state})


def test_due_reasons() -> None:
    """Never updated, too old, another image, unhealthy: due; recent and healthy: not."""
    cfg = ImageSettings(interval_days=25)
    day = 86400.0
    record = {"image_id": "sha256:a", "updated_at": 100 * day}
    assert due_reasons(cfg, [_container("sha256:a")], None, 100 * day)
    assert due_reasons(cfg, [_container("sha256:a")], record, 110 * day) == []
    assert "25 days ago" in due_reasons(cfg, [_container("sha256:a")], record, 125 * day)[0]
    assert "not the recorded" in due_reasons(cfg, [_container("sha256:b")], record, 101 * day)[0]
    sick = due_reasons(cfg, [_container("sha256:a", "unhealthy")], record, 101 * day)
    assert sick == ["c1 is unhealthy on the recorded image"]


def test_rollback_tags_are_valid_repository_names() -> None:
    """Upper case and odd characters in project or service become a lower-case name."""
    assert tag_name("remediation-rollback", "Shop", "Web_1") == "remediation-rollback/shop-web_1"
    assert tag_name("r", "a b", "c") == "r/a-b-c"
