"""Image updates for compose services (runbook 001 "Monthly Operations 1. Security Updates": pull base images, rebuild)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from remediation.settings.base import Section, unique_names

_SERVICE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


class ImageService(Section):
    """One compose service update_images may update: where its new image comes from."""

    service: str = Field(pattern=_SERVICE, description="com.docker.compose.service")
    image: str | None = Field(
        None,
        max_length=512,
        description="image to pull and tag; unset = the name the service's containers run",
    )
    pull: bool = Field(True, description="pull when the registry answers")
    build_context: Path | None = Field(
        None, description="folder to rebuild from; unset = the compose file's build section"
    )
    dockerfile: str | None = Field(
        None, max_length=256, description="relative to build_context; unset = Dockerfile"
    )
    build_args: dict[str, str] = Field(default_factory=dict, max_length=64)

    @field_validator("dockerfile")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in Path(value).parts):
            raise ValueError("dockerfile must be a path inside build_context")
        return value


class ImageSettings(Section):
    """Image updates for compose services (runbook 001 "Monthly Operations 1. Security Updates": pull base images, rebuild)."""

    services: list[ImageService] = Field(
        default_factory=list,
        max_length=32,
        description="services of CONTAINERS__PROJECT update_images updates, in this order",
    )
    compose_file: Path | None = Field(
        None,
        description="compose file whose build sections are read; unset = the one the"
        " containers' com.docker.compose.project.config_files label names",
    )
    interval_days: int = Field(25, ge=1, le=366, description="an update is due after this")
    registry_timeout_seconds: float = Field(
        5, gt=0, le=60, description="a registry that does not answer within this is skipped"
    )
    pull_timeout_seconds: int = Field(300, ge=1, le=3600)
    build_timeout_seconds: int = Field(900, ge=1, le=3600)
    build_pull: bool = Field(False, description="docker build --pull (fresh base images)")
    health_window_seconds: int = Field(
        120, ge=1, le=1800, description="a recreated container must be healthy within this"
    )
    stable_seconds: int = Field(
        10, ge=1, le=600, description="without a healthcheck: running this long is healthy"
    )
    rollback_repository: str = Field(
        "remediation-rollback",
        pattern=r"^[a-z0-9]+([._\-/][a-z0-9]+)*$",
        max_length=128,
        description="previous images are tagged <this>/<project>-<service>:previous",
    )
    max_run_seconds: int = Field(
        3000, ge=60, le=3300, description="no further service is started after this"
    )

    @model_validator(mode="after")
    def _unique(self) -> ImageSettings:
        unique_names(s.service for s in self.services)
        return self
