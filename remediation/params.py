"""Base models for task kwargs: frozen, extra keys forbidden, validated before anything runs."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_TARGET = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _target_name(value: str) -> str:
    if not _TARGET.match(value):
        raise ValueError("target names are 1-64 letters, digits, '_', '.', '-'")
    return value


TargetName = Annotated[str, AfterValidator(_target_name)]


class Params(BaseModel):
    """Kwargs of a check or action task. Unknown keys and wrong types are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class CheckParams(Params):
    """Every check reads one configured target."""

    target: TargetName = Field("self", description="configured target name")


class ActionParams(Params):
    """Every action changes one configured target."""

    target: TargetName = Field("self", description="configured target name")
