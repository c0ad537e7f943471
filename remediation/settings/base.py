"""What every settings section shares: the environment prefix and a strict, frozen model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

ENV_PREFIX = "REMEDIATION_"
NESTED = "__"
MIN_SIGNING_KEY = 32
"""Characters a signing key needs at least (`secrets.token_hex(32)` gives 64)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def unique_names(names: Any) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"name {name!r} is used twice")
        seen.add(name)
