"""Doubles for driving the runner and guards without Celery."""

from __future__ import annotations

from typing import Any

from remediation.context import Trigger
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import ActionSpec, GuardOptions


class Recorder:
    """A dispatcher that records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], Trigger | None]] = []

    def __call__(self, task: str, kwargs: dict[str, Any], trigger: Trigger | None) -> None:
        self.sent.append((task, kwargs, trigger))


def _noop(ctx: object, params: ActionParams) -> ActionResult:
    return ActionResult()


def spec(**options: object) -> ActionSpec:
    return ActionSpec(
        "poke_thing",
        _noop,
        ActionParams,
        "doc",
        lambda ctx, p: p,
        GuardOptions(**options),  # type: ignore[arg-type]
    )
