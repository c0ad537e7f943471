"""Guards between a finding and a side effect: breaker, blast radius, dry-run, flapping."""

from __future__ import annotations

from pydantic import Field

from remediation.settings.base import Section


class BreakerSettings(Section):
    """Circuit breaker defaults (resilience4j semantics), per action + target."""

    failure_rate_threshold: float = Field(0.5, gt=0, le=1, description="failed share that opens")
    minimum_calls: int = Field(4, ge=1, le=1000, description="calls in window before rate counts")
    window_seconds: int = Field(900, ge=1, description="sliding window of recorded calls")
    wait_seconds: int = Field(300, ge=1, description="time open before half-open trials")
    half_open_permits: int = Field(1, ge=1, le=100, description="concurrent half-open trials")
    permit_lease_seconds: int = Field(900, ge=1, description="a trial permit expires after this")


class BlastCap(Section):
    """At most ``units`` (containers, workers, keys, sessions...) per ``window_seconds``."""

    units: int = Field(ge=0, le=10_000_000)
    window_seconds: int = Field(3600, ge=1, le=7 * 86400)


# Blast-radius caps across all workers (issue 6): what one action may touch per window.
DEFAULT_BLAST_RADIUS = {
    "restart_container": BlastCap(units=5, window_seconds=600),
    "scale_workers": BlastCap(units=4, window_seconds=600),
    "recreate_service": BlastCap(units=16, window_seconds=3600),
    "flush_cache": BlastCap(units=200_000, window_seconds=3600),
    "terminate_idle_transactions": BlastCap(units=20, window_seconds=600),
    "cancel_long_queries": BlastCap(units=10, window_seconds=600),
    "revoke_stuck_tasks": BlastCap(units=20, window_seconds=600),
    "dead_letter_stale_jobs": BlastCap(units=50_000, window_seconds=3600),
    "dedupe_job_queue": BlastCap(units=50_000, window_seconds=3600),
    "block_ip": BlastCap(units=50, window_seconds=600),  # new bans (issue 13)
}


class GuardSettings(Section):
    """Guards that stand between a finding and a side effect."""

    dry_run: bool = Field(False, description="global dry-run: decide and audit, never act")
    dry_run_actions: list[str] = Field(default_factory=list, description="per-action dry-run")
    lock_ttl_seconds: int = Field(900, ge=1, description="per-target lock lease")
    incident_ttl_seconds: int = Field(3600, ge=60, description="an unresolved incident lives this")
    cooldown_overrides: dict[str, int] = Field(default_factory=dict)
    budget_overrides: dict[str, int] = Field(default_factory=dict)
    flap_max_runs: int = Field(6, ge=2, le=1000, description="runs on one target that count as")
    flap_window_minutes: int = Field(30, ge=1, le=1440, description="...flapping within this")
    flap_suspend_minutes: int = Field(120, ge=1, le=10080, description="suspension once flapping")
    flap_overrides: dict[str, int] = Field(default_factory=dict, description="max runs per action")
    consecutive_runs: int = Field(1, ge=1, le=100, description="runs a condition must persist")
    consecutive_overrides: dict[str, int] = Field(default_factory=dict, description="per check")
    blast_radius: dict[str, BlastCap] = Field(
        default_factory=lambda: dict(DEFAULT_BLAST_RADIUS),
        description="units per action per window, across all workers",
    )
    max_kwargs_bytes: int = Field(
        32768, ge=1024, le=16 * 1024 * 1024, description="a task's kwargs, serialized, at most"
    )
