"""Backups: where, how often, how many to keep."""

from __future__ import annotations

from pydantic import Field

from remediation.settings.base import Section


class BackupSettings(Section):
    """Backups (runbooks 000, 001, 003): where, how often, how many to keep."""

    dir: str = Field(".data/backups", description="dumps, manifests and file archives")
    interval_hours: float = Field(24, gt=0, description="newest verified backup must be younger")
    keep_daily: int = Field(7, ge=1, le=365)
    keep_weekly: int = Field(4, ge=0, le=520)
    keep_monthly: int = Field(6, ge=0, le=240)
    timeout_seconds: int = Field(
        3600,
        ge=10,
        le=6600,
        description="pg_dump / pg_restore time limit (under the 2 h task limit)",
    )
    file_paths: list[str] = Field(default_factory=list, description="backup_files: what to archive")
    keep_file_archives: int = Field(14, ge=1, le=1000)
