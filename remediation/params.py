"""Base models for task kwargs: frozen, extra keys forbidden, validated before anything runs."""

from __future__ import annotations

import re
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

_TARGET = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _target_name(value: str) -> str:
    if not _TARGET.match(value):
        raise ValueError("target names are 1-64 letters, digits, '_', '.', '-'")
    return value


TargetName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_target_name)]


def _no_nul(value: Any, where: str) -> None:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where}: NUL characters are not allowed")
    if isinstance(value, dict):
        for key, item in value.items():
            _no_nul(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _no_nul(item, f"{where}.{i}")


class Params(BaseModel):
    """Kwargs of a check or action task. Unknown keys and wrong types are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    @model_validator(mode="after")
    def _storable(self) -> Self:
        """Params are audited as jsonb, which cannot hold NUL: refuse them before acting."""
        _no_nul(self.model_dump(), "")
        return self


class CheckParams(Params):
    """Every check reads one configured target."""

    target: TargetName = Field("self", description="configured target name")

    @property
    def scope(self) -> str:
        """What one run looks at, for the hysteresis count (remediation.guards.streaks): the
        target; a check narrowed by a kwarg to one part of it (one container) says so, so
        its runs do not reset the whole target's streaks."""
        return self.target


class ActionParams(Params):
    """Every action changes one configured target."""

    target: TargetName = Field("self", description="configured target name")
