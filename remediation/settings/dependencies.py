"""Vulnerable dependencies found by pip-audit (runbooks 003 "Update dependencies", 004 "Dependency vulnerabilities")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from remediation.settings.base import Section, unique_names

AdvisorySeverity = Literal["warning", "high", "critical"]
OSV_QUERY_URL = "https://api.osv.dev/v1/query"
"""pip-audit's default OSV endpoint (its --osv-url)."""


class DependencySource(Section):
    """What one scan audits: pinned requirement files, or an installed environment."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    requirements: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="pinned requirement files (name==version); audited without pip (no resolution)",
    )
    environment: str | None = Field(
        None, description="a virtualenv folder (or a site-packages folder) to audit as installed"
    )
    severity: AdvisorySeverity | None = Field(None, description="overrides SEVERITY here")

    @model_validator(mode="after")
    def _one_kind(self) -> DependencySource:
        if bool(self.requirements) == (self.environment is not None):
            raise ValueError(f"source {self.name}: give requirements or environment (one of them)")
        return self


class DependencySettings(Section):
    """Vulnerable dependencies found by pip-audit (runbooks 003 "Update dependencies", 004 "Dependency vulnerabilities")."""

    sources: list[DependencySource] = Field(default_factory=list, max_length=100)
    service: Literal["pypi", "osv"] = Field(
        "pypi", description="pip-audit's advisory service (its -s); osv honours OSV_URL"
    )
    osv_url: SecretStr = Field(
        SecretStr(OSV_QUERY_URL),
        description="an OSV-compatible /v1/query (a mirror's credentials may be in it)",
    )
    timeout_seconds: float = Field(
        240, gt=0, le=3600, description="one whole scan; keep below CELERY__SOFT_TIME_LIMIT"
    )
    request_timeout_seconds: int = Field(15, ge=1, le=300, description="pip-audit's --timeout")
    severity: AdvisorySeverity = Field("high", description="of a vulnerable package")
    package_severity: dict[str, AdvisorySeverity] = Field(
        default_factory=dict, description="per package name, e.g. {'django': 'critical'}"
    )
    ignore_ids: list[str] = Field(
        default_factory=list, description="advisory ids accepted as risks (pip-audit --ignore-vuln)"
    )
    max_output_bytes: int = Field(8 << 20, ge=4096, description="pip-audit JSON read at most")

    @field_validator("osv_url")
    @classmethod
    def _http(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: list[DependencySource]) -> list[DependencySource]:
        unique_names(s.name for s in sources)
        return sources
