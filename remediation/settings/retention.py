"""Audit retention (issue 15): how long each kind of audit row is kept, and the daily prune."""

from __future__ import annotations

from pydantic import Field, model_validator

from remediation.settings.base import Section


class RetentionSettings(Section):
    """Days each kind of audit row is kept; the prune deletes in bounded batches."""

    enabled: bool = Field(
        True,
        description="beat runs the prune (remediation.audit.prune) once a day; false: only"
        " `remediation db prune --apply` by hand deletes",
    )
    check_runs_days: int = Field(
        14,
        ge=1,
        le=3650,
        description="check runs without findings (and no action verified by them) are kept"
        " this long",
    )
    audit_days: int = Field(
        400,
        ge=1,
        le=3650,
        description="findings with their check runs, guard decisions and action runs are kept"
        " this long (findings at least 8 days: a queued action's trigger may still name one)",
    )
    observations_days: int = Field(
        400, ge=1, le=3650, description="observations (values a check compares with) are kept"
    )
    batch_size: int = Field(
        5000,
        ge=100,
        le=50_000,
        description="rows one DELETE removes at most (each batch is its own short transaction)",
    )

    @model_validator(mode="after")
    def _order(self) -> RetentionSettings:
        if self.check_runs_days > self.audit_days:
            raise ValueError("check_runs_days must not exceed audit_days")
        return self
