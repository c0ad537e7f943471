"""The miniature's container: one replica of a compose service ("scraper" of a project of
the demo's own), created on the Docker engine when it answers and an image is at hand (the
test image `make docker` imports, or busybox). Labelled as `docker compose` labels its
containers, so the remediator's docker_containers check and `remediation watch` see it."""

from __future__ import annotations

import secrets
from typing import Any

import docker

from remediation.clients.docker import NUMBER_LABEL, ONEOFF_LABEL, PROJECT_LABEL, SERVICE_LABEL
from remediation.redact import redact_text

IMAGES = ("remediation-test/busybox:latest", "busybox:latest")
TIMEOUT = 30
"""Seconds one Docker API call may take."""


class DemoContainer:
    """The project, its one container, and the clean-up that removes them."""

    def __init__(self, dc: Any, image: str) -> None:
        self.dc = dc
        self.image = image
        self.project = f"remediation-demo-{secrets.token_hex(3)}"
        self.container: Any = None

    @classmethod
    def find(cls, url: str) -> tuple[DemoContainer | None, str]:
        """(the container's maker, "") when the engine at url (REMEDIATION_CONTAINERS__DOCKER_URL)
        answers and has an image, else (None, why not)."""
        try:
            dc = docker.DockerClient(base_url=url, timeout=TIMEOUT)
            dc.ping()
        except docker.errors.DockerException:
            return None, f"Docker not available (no engine answers at {redact_text(url)})"
        for image in IMAGES:
            try:
                dc.images.get(image)
            except docker.errors.DockerException:
                continue
            return cls(dc, image), ""
        return None, f"no image to run ({' or '.join(IMAGES)}; `make docker` imports the first)"

    def start(self) -> str:
        labels = {
            PROJECT_LABEL: self.project,
            SERVICE_LABEL: "scraper",
            NUMBER_LABEL: "1",
            ONEOFF_LABEL: "False",
        }
        self.container = self.dc.containers.run(
            self.image,
            ["sleep", "86400"],
            name=f"{self.project}-scraper-1",
            labels=labels,
            network_mode="none",
            detach=True,
        )
        return str(self.container.name)

    def kill(self) -> None:
        self.container.kill()

    def remove(self) -> None:
        for c in self.dc.containers.list(
            all=True, filters={"label": f"{PROJECT_LABEL}={self.project}"}
        ):
            c.remove(force=True)
        self.dc.close()
