"""Alertmanager's webhook payload, version 4, as a validated model (every field bounded).

https://prometheus.io/docs/alerting/latest/configuration/#webhook_config documents it.
Unknown top-level or per-alert fields are ignored (a newer Alertmanager may add some);
everything the intake reads is checked for type and size here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

LabelName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$")]
LabelValue = Annotated[str, StringConstraints(max_length=4096)]
Labels = Annotated[dict[LabelName, LabelValue], Field(max_length=64)]
Text = Annotated[str, StringConstraints(max_length=8192)]


def _no_nul_labels(value: dict[str, str]) -> dict[str, str]:
    if any("\x00" in v for v in value.values()):
        raise ValueError("label values cannot hold NUL characters")
    return value


def _no_nul(value: str) -> str:
    """PostgreSQL text cannot hold NUL: what the audit stores must not carry one."""
    if "\x00" in value:
        raise ValueError("cannot hold NUL characters")
    return value


class Alert(BaseModel):
    """One alert of a notification."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["firing", "resolved"]
    labels: Annotated[Labels, AfterValidator(_no_nul_labels)]
    annotations: Annotated[Labels, AfterValidator(_no_nul_labels)] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: Text = ""
    fingerprint: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{1,32}$")]

    @field_validator("startsAt")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """In UTC (a naive time is taken as UTC); a time UTC cannot hold is refused."""
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:
            raise ValueError("startsAt is out of range") from None

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def occurrence(self) -> str:
        """startsAt in one spelling (UTC, microseconds), so copies of one alert compare equal."""
        return self.startsAt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class WebhookPayload(BaseModel):
    """What Alertmanager POSTs to a webhook receiver (version 4)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Literal["4"]
    groupKey: Text
    truncatedAlerts: int = Field(0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: Annotated[str, StringConstraints(max_length=256), AfterValidator(_no_nul)]
    groupLabels: Labels = Field(default_factory=dict)
    commonLabels: Labels = Field(default_factory=dict)
    commonAnnotations: Labels = Field(default_factory=dict)
    externalURL: Text = ""
    alerts: list[Alert] = Field(max_length=10_000)


class IntakeReply(BaseModel):
    """What the intake did with one notification: counts, and the audit run that records it."""

    received: int
    mapped: int = Field(description="firing alerts turned into findings (playbook run)")
    duplicates: int = Field(description="already seen (fingerprint + startsAt): nothing run")
    unmapped: int = Field(description="no rule matched: audited only")
    refused: int = Field(description="a rule matched but its target is not configured")
    resolved: int = Field(description="resolved alerts (their incident closed)")
    check_run_id: int | None = Field(description="the audit's check run of check 'alertmanager'")


class Problem(BaseModel):
    """Every 4xx/5xx body."""

    detail: str
