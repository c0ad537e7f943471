"""The PostgreSQL checks and session actions, data-quality and freshness rules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from remediation.settings.base import Section


class DataQualityRule(Section):
    """A named SQL check: the query returns rows of (subject, value); a value past the
    threshold in the given direction is a finding. Read-only: it runs in a read-only
    transaction with a statement timeout."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    sql: str = Field(min_length=1)
    threshold: float
    direction: Literal["below", "above"] = "below"
    severity: Literal["info", "warning", "high", "critical"] = "high"
    description: str = ""


class FreshnessRule(Section):
    """Runbook 004 data freshness: the newest value of a timestamp column must be younger
    than max_age_seconds."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    table: str = Field(min_length=1, description="'schema.table' or 'table' (public)")
    column: str = Field(min_length=1, max_length=63)
    max_age_seconds: int = Field(ge=1)
    severity: Literal["info", "warning", "high", "critical"] = "high"


# Runbook 001 "Data Quality Issues" and "Daily Operations 3. Data Quality Check".
DEFAULT_DATA_QUALITY = [
    DataQualityRule(
        name="extraction_confidence",
        sql=(
            "SELECT mu.domain, avg(ph.extraction_confidence) FROM price_history ph"
            " JOIN monitored_urls mu ON ph.url_id = mu.id"
            " WHERE ph.checked_at > now() - interval '1 hour' GROUP BY mu.domain"
        ),
        threshold=0.8,
        direction="below",
        severity="high",
        description="runbook 001: hourly extraction confidence per domain below 0.8",
    ),
    DataQualityRule(
        name="missing_price_share",
        sql=(
            "SELECT 'price_history', (count(*) FILTER (WHERE price IS NULL))::float8"
            " / nullif(count(*), 0) FROM price_history"
            " WHERE checked_at > now() - interval '24 hours'"
        ),
        threshold=0.2,
        direction="above",
        severity="warning",
        description="runbook 001: share of rows in the last 24 h with a null price",
    ),
]


class PostgresSettings(Section):
    """Thresholds of the PostgreSQL checks and bounds of the session actions."""

    connect_timeout_seconds: int = Field(5, ge=1, le=120)
    latency_warning_ms: float = Field(100, gt=0, description="round trip of SELECT 1")
    latency_high_ms: float = Field(1000, gt=0)
    connections_warning_ratio: float = Field(0.8, gt=0, le=1, description="runbook 004: > 80 %")
    connections_high_ratio: float = Field(0.9, gt=0, le=1)
    connections_critical_ratio: float = Field(0.95, gt=0, le=1, description="pool exhaustion")
    pool_size: int | None = Field(None, ge=1, description="the application's pool size")
    pool_application_name: str | None = Field(None, description="application_name of the pool")
    long_query_seconds: int = Field(300, ge=1, description="active queries running longer")
    idle_in_transaction_seconds: int = Field(600, ge=1, description="idle in transaction longer")
    session_allow_roles: list[str] = Field(default_factory=list, description="may be ended")
    session_allow_applications: list[str] = Field(default_factory=list, description="may be ended")
    max_sessions_per_run: int = Field(5, ge=1, le=100, description="terminations/cancels per run")
    cancel_long_queries: bool = Field(False, description="opt-in: cancel_long_queries may act")
    stale_stats_days: float = Field(7, gt=0, description="last (auto)analyze older than this")
    size_growth_warning_percent: float = Field(20, gt=0, description="growth since last run")
    slow_query_warning_ms: float = Field(1000, gt=0, description="runbook 002: P95 > 1 s medium")
    slow_query_high_ms: float = Field(2000, gt=0, description="runbook 002: P95 > 2 s high")
    slow_query_critical_ms: float = Field(5000, gt=0, description="runbook 002: P95 > 5 s critical")
    data_quality: list[DataQualityRule] = Field(default_factory=lambda: list(DEFAULT_DATA_QUALITY))
    freshness: list[FreshnessRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _bands_in_order(self) -> PostgresSettings:
        for name, bands in (
            (
                "connections",
                (
                    self.connections_warning_ratio,
                    self.connections_high_ratio,
                    self.connections_critical_ratio,
                ),
            ),
            ("latency", (self.latency_warning_ms, self.latency_high_ms)),
            (
                "slow_query",
                (self.slow_query_warning_ms, self.slow_query_high_ms, self.slow_query_critical_ms),
            ),
        ):
            if list(bands) != sorted(bands):
                raise ValueError(f"{name} bands must rise from warning to high to critical")
        if (self.pool_size is None) != (self.pool_application_name is None):
            raise ValueError("pool_size and pool_application_name go together")
        return self
