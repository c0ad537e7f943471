"""TLS certificates: expiry, name match and renewal (runbook 001 "Monthly Operations 1. Security Updates": certbot renew)."""

from __future__ import annotations

import shlex

from pydantic import Field, field_validator, model_validator

from remediation.settings.base import Section, unique_names

DEFAULT_RENEW_COMMAND = "certbot renew --non-interactive"


def _argv(value: str | None) -> str | None:
    """A command line as configured; refused when shlex cannot split it."""
    if value is None or not value.strip():
        return value
    try:
        shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split the command {value!r}: {exc}") from None
    return value


class CertificateTarget(Section):
    """One TLS endpoint whose certificate is watched (and renewed by its renew command)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    host: str = Field(min_length=1, max_length=253, description="what is connected to")
    port: int = Field(443, ge=1, le=65535)
    server_name: str | None = Field(
        None, max_length=253, description="SNI and the name the certificate must match (host)"
    )
    ca_file: str | None = Field(None, description="CA bundle for a private CA (overrides CA_FILE)")
    renew_command: str | None = Field(
        None, description="overrides RENEW_COMMAND for this certificate; '' = never renewed"
    )

    @field_validator("renew_command")
    @classmethod
    def _splittable(cls, value: str | None) -> str | None:
        return _argv(value)

    @property
    def expected_name(self) -> str:
        return self.server_name or self.host


class CertificateSettings(Section):
    """TLS certificates: expiry, name match and renewal (runbook 001 "Monthly Operations 1. Security Updates": certbot renew)."""

    targets: list[CertificateTarget] = Field(default_factory=list, max_length=200)
    warning_days: float = Field(30, gt=0, description="expiry closer than this: warning")
    high_days: float = Field(14, gt=0, description="closer than this: high")
    critical_days: float = Field(7, gt=0, description="closer than this: critical (expired too)")
    ca_file: str | None = Field(None, description="CA bundle; unset = the system's trust store")
    timeout_seconds: float = Field(10, gt=0, le=120, description="connect + handshake, per target")
    workers: int = Field(8, ge=1, le=64, description="targets probed at once")
    renew_command: str = Field(
        DEFAULT_RENEW_COMMAND, description="argv (shlex-split, no shell); '' = renewal disabled"
    )
    renew_timeout_seconds: float = Field(
        600, gt=0, le=840, description="the renew command is killed (its process group) after"
    )
    renew_output_bytes: int = Field(
        8192, ge=256, le=1 << 20, description="of the command's output kept (redacted)"
    )

    @field_validator("renew_command")
    @classmethod
    def _splittable(cls, value: str) -> str:
        return _argv(value) or ""

    @field_validator("targets")
    @classmethod
    def _unique(cls, targets: list[CertificateTarget]) -> list[CertificateTarget]:
        unique_names(t.name.lower() for t in targets)
        return targets

    @model_validator(mode="after")
    def _bands(self) -> CertificateSettings:
        if not self.critical_days <= self.high_days <= self.warning_days:
            raise ValueError("need CRITICAL_DAYS <= HIGH_DAYS <= WARNING_DAYS")
        return self

    def renew_argv(self, target: CertificateTarget) -> list[str]:
        """The renew command of one certificate as argv ([] = renewal disabled)."""
        line = self.renew_command if target.renew_command is None else target.renew_command
        return shlex.split(line)
