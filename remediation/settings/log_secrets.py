"""Secrets leaked into log files (runbook 004 "Security Check Failures": FA account ids in logs)."""

from __future__ import annotations

import os
import shlex
from typing import Annotated

import re2
from pydantic import Field, field_validator, model_validator

from remediation.security.log_patterns import BUILTIN
from remediation.settings.base import Section

_PATH = Annotated[str, Field(min_length=1, max_length=4096)]
_NAME = r"^[a-z][a-z0-9_]{0,39}$"


class LogSecretsSettings(Section):
    """Secrets leaked into log files (runbook 004 "Security Check Failures": FA account ids in logs).

    The log_secrets check scans ``files`` (absolute paths or globs) incrementally; the
    quarantine_log action copies a leaking file into ``quarantine_dir`` and masks the secrets
    in place; enable_log_scrubbing turns on ``scrub_key`` in ``app_config``; the restart goes
    to restart_container on ``app_container`` (no container: a notification asks for it)."""

    files: list[_PATH] = Field(
        default_factory=list,
        max_length=50,
        description="log files to scan, absolute paths or globs (/var/log/autotrader/*.log)",
    )
    max_files: int = Field(200, ge=1, le=10_000, description="files the globs may match at most")
    max_bytes_per_run: int = Field(
        64 << 20, ge=4096, description="bytes read per check run over all files"
    )
    max_line_bytes: int = Field(
        64 << 10, ge=256, description="a longer line is scanned in its first this many bytes"
    )
    state_ttl_days: float = Field(30, gt=0, description="a file unseen this long is forgotten")
    patterns: dict[Annotated[str, Field(pattern=_NAME)], Annotated[str, Field(max_length=1000)]] = (
        Field(
            default_factory=dict,
            max_length=50,
            description="operator patterns, name -> RE2 regex (a group named secret is masked)",
        )
    )
    disabled_patterns: list[Annotated[str, Field(max_length=40)]] = Field(
        default_factory=list, max_length=50, description="built-in patterns to leave out"
    )
    quarantine_dir: _PATH = Field(
        "/var/lib/remediation/log-quarantine", description="0700 folder for original copies"
    )
    quarantine_max_bytes: int = Field(
        256 << 20, ge=1, description="quarantine_log refuses a bigger file"
    )
    rotate_command: str = Field(
        "",
        max_length=4096,
        description="run after quarantine_log masked a file (shlex-split, no shell), e.g."
        " logrotate -f /etc/logrotate.d/autotrader; empty: none",
    )
    rotate_timeout_seconds: float = Field(60, gt=0, le=3600)
    app_config: _PATH | None = Field(None, description="the application's YAML (security.yaml)")
    scrub_key: str = Field(
        "ibkr_fa_scrubbing",
        max_length=200,
        pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$",
        description="dotted key set to true by enable_log_scrubbing",
    )
    config_backups: int = Field(5, ge=1, le=100, description="<file>.<stamp>.bak kept")
    app_container: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$",
        description="restarted after scrubbing is turned on; none: a notification asks for it",
    )

    @field_validator("files")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        for path in value:
            if not os.path.isabs(path):
                raise ValueError(f"{path!r} is not an absolute path")
        return value

    @field_validator("patterns")
    @classmethod
    def _linear(cls, value: dict[str, str]) -> dict[str, str]:
        """Every operator pattern compiles on RE2 (linear time: no backreferences, no
        lookaround), and matches no empty string (it would flag every line)."""
        for name, regex in value.items():
            try:
                compiled = re2.compile(regex.encode())
            except re2.error as exc:
                raise ValueError(f"pattern {name!r} is not RE2 (linear-time): {exc}") from None
            if compiled.search(b"") is not None:
                raise ValueError(f"pattern {name!r} matches the empty string")
        return value

    @field_validator("rotate_command")
    @classmethod
    def _argv(cls, value: str) -> str:
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split into arguments: {exc}") from None
        return value

    @field_validator("app_config", "quarantine_dir")
    @classmethod
    def _config_absolute(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError(f"{value!r} is not an absolute path")
        return value

    @model_validator(mode="after")
    def _known_disabled(self) -> LogSecretsSettings:
        unknown = sorted(set(self.disabled_patterns) - set(BUILTIN))
        if unknown:
            raise ValueError(f"disabled_patterns: unknown {unknown} (known: {sorted(BUILTIN)})")
        if self.max_line_bytes > self.max_bytes_per_run:
            raise ValueError("max_line_bytes must not exceed max_bytes_per_run")
        clash = sorted(set(self.patterns) & set(BUILTIN))
        if clash:
            raise ValueError(f"patterns: {clash} are built-in names; pick others")
        return self
