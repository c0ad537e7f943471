"""`remediation doctor` and the checks the worker runs at start."""

from __future__ import annotations

from pydantic import Field

from remediation.settings.base import Section


class DoctorSettings(Section):
    """The doctor's read-only probes (remediation.doctor)."""

    at_start: bool = Field(True, description="the worker runs the doctor at start and logs it")
    probe_timeout_seconds: float = Field(
        20, gt=0, le=600, description="a probe area still running after this is 'cannot tell'"
    )
    free_space_margin: float = Field(
        1.2, ge=1, le=100, description="backup folder free space >= database size times this"
    )
