"""Redis as a cache, and the disk and memory of the host."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from remediation.settings.base import Section


class CacheSettings(Section):
    """Redis as a cache (runbooks 002 "Redis/Cache Issues", 003 "Clear Cache")."""

    latency_warning_ms: float = Field(50, gt=0)
    memory_warning_ratio: float = Field(0.8, gt=0, le=1, description="used / maxmemory")
    memory_high_ratio: float = Field(0.9, gt=0, le=1)
    miss_ratio_high: float = Field(0.5, gt=0, le=1, description="runbook 002: misses > 50 %")
    min_lookups: int = Field(1000, ge=1, description="hits + misses before the ratio counts")
    flush_patterns: list[str] = Field(
        default_factory=list, description="keys flush_cache may delete"
    )
    flush_batch: int = Field(500, ge=1, le=10_000)
    flush_max_keys_per_run: int = Field(100_000, ge=1)


class HostSettings(Section):
    """Disk and memory of the host the worker runs on (runbook 002)."""

    mounts: list[str] = Field(default_factory=lambda: ["/"])
    disk_warning_percent: float = Field(80, gt=0, le=100, description="runbook 002: > 80 % medium")
    disk_high_percent: float = Field(90, gt=0, le=100, description="> 90 % high")
    disk_critical_percent: float = Field(95, gt=0, le=100, description="> 95 % critical")
    memory_high_percent: float = Field(90, gt=0, le=100, description="runbook 002: > 90 % high")
    cleanup_dirs: list[str] = Field(default_factory=list, description="cleanup_disk may touch")
    cleanup_patterns: list[str] = Field(
        default_factory=lambda: ["*.log", "*.log.*", "*.tmp", "*.gz"]
    )
    cleanup_retention_days: float = Field(7, gt=0)
    cleanup_mode: Literal["delete", "gzip"] = "delete"
    cleanup_max_bytes_per_run: int = Field(1 << 30, ge=1)
