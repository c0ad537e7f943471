"""`remediation watch`: event sources that trigger the checks the moment something breaks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from remediation.settings.base import Section

SourceName = Literal["docker", "celery", "logs"]
SOURCES: tuple[SourceName, ...] = ("docker", "celery", "logs")


class WatchSettings(Section):
    """Event sources, their leases across hosts, and how events become checks (README
    "Event sources")."""

    sources: list[SourceName] = Field(
        default_factory=lambda: list(SOURCES),
        max_length=3,
        description="sources this watcher may run; each also needs its own configuration",
    )
    lease_seconds: float = Field(
        5.0, ge=1, le=300, description="a standby takes a silent watcher's source over after this"
    )
    min_interval_seconds: float = Field(
        1.0, ge=0.01, le=3600, description="per resource: at most one check per interval"
    )
    log_min_interval_seconds: float = Field(
        0.1, ge=0.01, le=3600, description="the same for a growing log (a ban within a second)"
    )
    max_checks_per_second: float = Field(
        20.0, gt=0, le=10_000, description="all sources together; more waits its turn"
    )
    burst: int = Field(20, ge=1, le=100_000, description="checks sent at once before the rate")
    max_pending: int = Field(
        1000, ge=1, le=1_000_000, description="resources waiting; past it events are dropped"
    )
    reconnect_min_seconds: float = Field(0.5, gt=0, le=60)
    reconnect_max_seconds: float = Field(30.0, gt=0, le=3600)
    log_poll_seconds: float = Field(
        0.25, ge=0.01, le=60, description="growth poll when inotify is unavailable"
    )
    log_inotify: bool = Field(True, description="false: poll even where inotify works")
    heartbeat_gap_seconds: float = Field(
        10.0, ge=1, le=3600, description="celery: a worker silent this long is a hint"
    )
    task_failures_per_minute: int = Field(
        30, ge=1, le=1_000_000, description="celery: failed tasks per minute that are a hint"
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus endpoint; 0 = off")
    metrics_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _backoff(self) -> WatchSettings:
        if self.reconnect_max_seconds < self.reconnect_min_seconds:
            raise ValueError("reconnect_max_seconds must be >= reconnect_min_seconds")
        return self
