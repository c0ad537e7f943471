"""docker-compose.yml cannot run here; at least its shape and env names are checked."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from remediation.settings import env_names

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_healthchecks_and_env_names() -> None:
    """redis, postgres, worker, beat; all healthchecked; env names are real settings."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "worker", "beat"}
    assert all("healthcheck" in s for s in services.values())
    known = set(env_names())
    for name in ("worker", "beat"):
        assert services[name]["env_file"] == ".env"
        used = set(services[name]["environment"])
        assert used <= known, used - known
    sockets = {
        n for n, s in services.items() if any("docker.sock" in v for v in s.get("volumes", []))
    }
    assert sockets == {"worker"}, "the Docker socket is mounted only where actions need it"


def test_compose_command_uses_the_package_app() -> None:
    """Worker and beat run `celery -A remediation`, the same app `celery call` uses."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert len(re.findall(r'"celery", "-A", "remediation"', text)) == 2
