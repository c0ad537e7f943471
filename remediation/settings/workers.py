"""Workers and containers: the job queue, Celery pools and scale targets, Docker containers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from remediation.settings.base import Section


class JobQueueSettings(Section):
    """Runbook 000 "Redis queue management": the application's job list."""

    key: str = Field("job_queue", min_length=1, max_length=512)
    keys: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="more job lists the actions may touch; 'prefix*' entries match a prefix",
    )
    dead_letter_key: str = Field("job_queue:dead_letter", min_length=1)
    id_field: str | None = Field(None, description="JSON field naming a job; None = whole payload")
    enqueued_at_field: str = Field("enqueued_at", description="JSON field, epoch seconds")
    max_age_seconds: int = Field(3600, ge=1, description="older jobs go to the dead-letter list")
    backlog_warning: int = Field(50, ge=1, description="runbook 004: pending jobs > 50")
    backlog_high: int = Field(1000, ge=1, description="runbook 002: queue depth > 1000")
    scan_limit: int = Field(10_000, ge=1, le=1_000_000, description="jobs examined per run")
    max_changes_per_run: int = Field(1000, ge=1, description="jobs removed or moved per run")


class ScaleTarget(Section):
    """A pool of workers scale_workers may resize, within bounds (runbook 004 / 002)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    backend: Literal["celery", "compose"] = "celery"
    queues: list[str] = Field(default_factory=lambda: ["celery"], min_length=1)
    min: int = Field(1, ge=0, le=256)
    max: int = Field(4, ge=1, le=256)
    step: int = Field(1, ge=1, le=32)
    worker: str | None = Field(None, description="celery: worker hostname; None = all")
    project: str | None = Field(None, description="compose: com.docker.compose.project")
    service: str | None = Field(None, description="compose: com.docker.compose.service")

    @model_validator(mode="after")
    def _bounds(self) -> ScaleTarget:
        if self.min > self.max:
            raise ValueError(f"scale target {self.name}: min above max")
        if self.backend == "compose" and not (self.project and self.service):
            raise ValueError(f"scale target {self.name}: compose needs project and service")
        return self


class WorkersSettings(Section):
    """Celery workers and queues of the monitored application (runbooks 002, 004)."""

    broker_url: SecretStr | None = Field(None, description="the app's broker; unset = ours")
    queues: list[str] = Field(default_factory=lambda: ["celery"], min_length=1)
    backlog_warning: int = Field(50, ge=1, description="runbook 004: pending jobs > 50")
    backlog_high: int = Field(1000, ge=1, description="runbook 002: queue depth > 1000")
    growth_warning_per_minute: float = Field(10, gt=0, description="backlog growth rate")
    expected_seconds: dict[str, float] = Field(default_factory=dict, description="per task")
    default_expected_seconds: float = Field(300, gt=0)
    stuck_factor: float = Field(3, ge=1, description="active longer than factor x expected")
    revoke_stuck: bool = Field(False, description="opt-in: revoke_stuck_tasks may act")
    max_revokes_per_run: int = Field(5, ge=1, le=100)
    scale_targets: list[ScaleTarget] = Field(default_factory=list)
    scale_down_stabilization_seconds: int = Field(300, ge=0, description="Kubernetes HPA: 300")


class ContainerSettings(Section):
    """Docker containers of a compose project (runbook 000 Docker management, 001)."""

    docker_url: str = Field("unix:///var/run/docker.sock")
    project: str | None = Field(None, description="compose project watched; unset = none")
    cpu_high_percent: float = Field(90, gt=0, le=10_000)
    memory_high_percent: float = Field(90, gt=0, le=100)
    restart_backoff_base_seconds: int = Field(10, ge=1, description="CrashLoopBackOff: 10 s")
    restart_backoff_max_seconds: int = Field(300, ge=1, description="doubling up to 5 min")
    flap_max_restarts: int = Field(5, ge=1, description="restarts within the window, then stop")
    flap_window_seconds: int = Field(600, ge=1)
    hard_reboot: bool = Field(
        False, description="recreate_service may recreate a service restarts gave up on"
    )
    hard_reboot_scope: Literal["service", "project"] = Field(
        "service", description="what a hard reboot recreates: the one service, or every one"
    )
    hard_reboot_wait_seconds: int = Field(
        60, ge=1, le=600, description="how long recreated containers get to run (and be healthy)"
    )
