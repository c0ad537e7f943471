"""API keys: presence, validity, age and rotation (runbooks 003 "Rotate API keys", 004 "API key validation failure")."""

from __future__ import annotations

import re
import shlex
from typing import Literal

from pydantic import Field, field_validator, model_validator

from remediation.settings.base import Section, unique_names

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _argv(value: str | list[str] | None) -> list[str] | None:
    """A command as an argv list: a JSON list as given, a string shlex-split (no shell)."""
    if value is None:
        return None
    argv = shlex.split(value) if isinstance(value, str) else list(value)
    if not argv or not argv[0]:
        raise ValueError("the command is empty")
    return argv


def _http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"{value[:80]!r} is not an http:// or https:// URL")
    return value


class ApiKey(Section):
    """One API key: where it comes from, how to tell it works, how old it may get, and
    (optionally) how to rotate it."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    env: str | None = Field(None, description="the worker's environment variable holding it")
    file: str | None = Field(None, description="a secret file holding it (one line)")
    validate_url: str | None = Field(None, description="a request the key must be accepted by")
    validate_method: Literal["GET", "HEAD", "POST"] = "GET"
    header: str = Field("Authorization", min_length=1, max_length=100, pattern=r"^[!-9;-~]+$")
    header_format: str = Field("Bearer {key}", description="the header's value; {key} is the key")
    expected_status: list[int] = Field(default_factory=lambda: [200], min_length=1)
    max_age_days: float | None = Field(90, gt=0, description="older is rotation due; none: never")
    rotatable: bool = Field(False, description="rotate_api_key may rotate it (file keys only)")
    generate_command: list[str] | None = Field(
        None, description="prints the new key on stdout; gets the old key on stdin"
    )
    generate_url: str | None = Field(None, description="POSTed with the old key; answers the new")
    generate_json_field: str | None = Field(
        None, description="dotted path of the new key in the JSON answer; none: the whole body"
    )
    revoke_command: list[str] | None = Field(None, description="gets the old key on stdin")
    revoke_url: str | None = Field(None, description="called with the old key in the header")
    revoke_method: Literal["DELETE", "POST"] = "DELETE"

    @field_validator("generate_command", "revoke_command", mode="before")
    @classmethod
    def _command(cls, value: str | list[str] | None) -> list[str] | None:
        return _argv(value)

    @field_validator("validate_url", "generate_url", "revoke_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"{value[:80]!r} is not an environment variable name")
        if value is not None and value.upper().startswith("REMEDIATION_"):
            raise ValueError("a REMEDIATION_ variable is the worker's own setting, not an API key")
        return value

    @field_validator("expected_status")
    @classmethod
    def _statuses(cls, value: list[int]) -> list[int]:
        bad = [s for s in value if not 100 <= s <= 599]
        if bad:
            raise ValueError(f"{bad} are not HTTP statuses")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> ApiKey:
        if (self.env is None) == (self.file is None):
            raise ValueError(f"key {self.name}: set exactly one of env and file")
        if "{key}" not in self.header_format:
            raise ValueError(f"key {self.name}: header_format must contain {{key}}")
        if self.rotatable:
            if self.file is None:
                raise ValueError(f"key {self.name}: only a file key can be rotated (not env)")
            if (self.generate_command is None) == (self.generate_url is None):
                raise ValueError(f"key {self.name}: set one of generate_command, generate_url")
            if (self.revoke_command is None) == (self.revoke_url is None):
                raise ValueError(f"key {self.name}: set one of revoke_command, revoke_url")
            if self.validate_url is None:
                raise ValueError(f"key {self.name}: a rotated key is validated: set validate_url")
        return self


class ApiKeySettings(Section):
    """API keys: presence, validity, age and rotation (runbooks 003 "Rotate API keys", 004 "API key validation failure")."""

    keys: list[ApiKey] = Field(default_factory=list, max_length=100)
    timeout_seconds: float = Field(10.0, gt=0, le=60, description="per validation request")
    command_timeout_seconds: float = Field(
        60.0, gt=0, le=300, description="generate and revoke commands or calls, each"
    )
    max_key_bytes: int = Field(8192, ge=16, le=65536, description="a longer key is refused")

    @field_validator("keys")
    @classmethod
    def _unique(cls, value: list[ApiKey]) -> list[ApiKey]:
        unique_names(k.name.lower() for k in value)
        return value

    def key(self, name: str) -> ApiKey | None:
        """The configured key a name means (case-insensitive)."""
        return next((k for k in self.keys if k.name.lower() == name.lower()), None)
