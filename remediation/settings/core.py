"""The worker itself: its audit spool, metrics, notifications, Celery limits, verification."""

from __future__ import annotations

from pydantic import Field, SecretStr

from remediation.settings.base import Section


class AuditSettings(Section):
    """Where audit rows wait while PostgreSQL does not answer (replayed in order later)."""

    spool_dir: str = Field(".data/audit-spool", min_length=1, description="local, fsync'd")
    spool_max_mb: int = Field(512, ge=1, le=1_000_000, description="refuse to act past this")


class MetricsSettings(Section):
    """The worker's own Prometheus endpoint (prometheus_client multiprocess mode)."""

    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(9808, ge=0, le=65535, description="0 = pick a free port")
    multiproc_dir: str = Field(".data/metrics", min_length=1, description="wiped at start")


class NotifySettings(Section):
    """Where notifications go (Slack-compatible incoming webhook)."""

    webhook_url: SecretStr | None = None
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    window_seconds: int = Field(3600, ge=1, description="same incident not sent twice within")


class CelerySettings(Section):
    """Worker safety defaults."""

    soft_time_limit: int = Field(300, ge=1)
    time_limit: int = Field(360, ge=2)
    max_retries_on_worker_lost: int = Field(3, ge=0, le=20)
    result_expires: int = Field(86400, ge=60)
    concurrency: int = Field(2, ge=1, le=64)
    redbeat_lock_timeout: int = Field(60, ge=2, description="standby beat takes over after this")
    beat_max_loop_interval: int = Field(5, ge=1)


class VerifySettings(Section):
    """How an action's effect is verified: re-run the check, bounded."""

    attempts: int = Field(5, ge=1, le=30)
    delay_seconds: float = Field(1.0, ge=0, le=60)
