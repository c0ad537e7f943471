"""Enhanced monitoring during an incident: a log level raised with expiry (runbook 001 "Security Incident Response")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from remediation.settings.base import Section, unique_names

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class LogLevelApp(Section):
    """An application whose log level can be raised: a Redis key it polls (set with a TTL,
    so it reverts by itself) and/or a key in its YAML or ini file (restored at expiry)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    level: LogLevel = Field("DEBUG", description="the level while raised")
    redis_target: str = Field("self", description="the Redis holding redis_key")
    redis_key: str | None = Field(None, max_length=512, description="the app polls its level here")
    file: str | None = Field(None, description="the app's YAML or ini configuration file")
    file_format: Literal["yaml", "ini"] = "yaml"
    file_key: str | None = Field(
        None, max_length=200, description="dotted path (yaml) or section.option (ini)"
    )

    @model_validator(mode="after")
    def _somewhere(self) -> LogLevelApp:
        if self.redis_key is None and self.file is None:
            raise ValueError(f"app {self.name}: set redis_key, file or both")
        if self.file is not None and not self.file_key:
            raise ValueError(f"app {self.name}: file needs file_key (e.g. logging.level)")
        if self.file_format == "ini" and self.file_key and "." not in self.file_key:
            raise ValueError(f"app {self.name}: an ini file_key is section.option")
        return self


class MonitoringSettings(Section):
    """Enhanced monitoring during an incident: a log level raised with expiry (runbook 001 "Security Incident Response")."""

    apps: list[LogLevelApp] = Field(default_factory=list, max_length=100)
    duration_seconds: int = Field(
        3600, ge=1, le=7 * 86400, description="how long a raise lasts at most (and by default)"
    )

    @field_validator("apps")
    @classmethod
    def _unique(cls, value: list[LogLevelApp]) -> list[LogLevelApp]:
        unique_names(a.name.lower() for a in value)
        return value

    def app(self, name: str) -> LogLevelApp | None:
        """The configured application a name means (case-insensitive)."""
        return next((a for a in self.apps if a.name.lower() == name.lower()), None)
