"""`remediation serve`: the HTTP service (issue 14) and its Alertmanager intake mapping."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from remediation.settings.base import Section, unique_names

_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$"
MIN_TOKEN = 24
"""Characters an API token needs at least (`secrets.token_urlsafe(32)` gives 43)."""


class ServeSettings(Section):
    """The HTTP service: where it listens, who may call it, how much it reads."""

    host: str = Field("127.0.0.1", max_length=255, description="address to listen on")
    port: int = Field(8087, ge=1, le=65535)
    tokens: list[SecretStr] = Field(
        default_factory=list,
        max_length=50,
        description="bearer tokens accepted (Authorization: Bearer ...); none = every call 401",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, le=64 * 1_048_576, description="a bigger request body is a 413"
    )
    console_session_seconds: int = Field(
        8 * 3600,
        ge=60,
        le=7 * 86400,
        description="a web console login lasts this long (signed session cookie)",
    )

    @field_validator("tokens")
    @classmethod
    def _long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        for token in value:
            if len(token.get_secret_value()) < MIN_TOKEN:
                raise ValueError(f"every token must be at least {MIN_TOKEN} characters")
        return value


class LabelOrFixed(Section):
    """A value taken from an alert's label, or fixed here (exactly one of the two)."""

    label: str | None = Field(None, pattern=_LABEL)
    value: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one(self) -> LabelOrFixed:
        if (self.label is None) == (self.value is None):
            raise ValueError("give exactly one of label, value")
        return self


class AlertRule(Section):
    """Turns a matching alert into a finding; the first matching rule wins."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    alertname: str | None = Field(None, max_length=200, description="match: the alertname label")
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=20, description="match: every one of these labels equal"
    )
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="the finding kind")
    target: LabelOrFixed = Field(description="the configured target (resolved, refused if unknown)")
    target_type: Literal["redis", "postgres", "any"] = Field(
        "redis", description="which configured targets the target is resolved against"
    )
    subject: LabelOrFixed | None = Field(None, description="resource inside the target")
    severity: LabelOrFixed = LabelOrFixed(value="warning")
    check: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="the check re-run to verify a fix (its findings share the kind); none:"
        " verified by the alert resolving (check alertmanager_alert)",
    )
    check_params: dict[str, str | int | float | bool] = Field(
        default_factory=dict, max_length=20, description="its kwargs (target is added)"
    )
    check_labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        description="more of its kwargs from the alert's labels: {kwarg: label}",
    )

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.match(_LABEL, name):
                raise ValueError(f"label name {name!r} is not a Prometheus label name")
        return value

    @field_validator("check_labels")
    @classmethod
    def _label_values(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            if not re.match(_LABEL, name):
                raise ValueError(f"label name {name!r} is not a Prometheus label name")
        return value

    @model_validator(mode="after")
    def _matches_something(self) -> AlertRule:
        if self.alertname is None and not self.labels:
            raise ValueError(f"rule {self.name}: match on alertname, labels or both")
        return self


class AlertSettings(Section):
    """Alertmanager intake: mapping rules, dedupe lifetime, batch bounds."""

    rules: list[AlertRule] = Field(default_factory=list, max_length=200)
    dedupe_ttl_seconds: int = Field(
        7 * 86400,
        ge=60,
        le=30 * 86400,
        description="how long a (fingerprint, startsAt) is remembered",
    )
    max_alerts: int = Field(1000, ge=1, le=10_000, description="alerts in one webhook call")

    @field_validator("rules")
    @classmethod
    def _unique(cls, value: list[AlertRule]) -> list[AlertRule]:
        unique_names(r.name for r in value)
        return value
