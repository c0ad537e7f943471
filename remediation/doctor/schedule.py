"""The beat schedule (REMEDIATION_SCHEDULE_MODULE) validates as beat would load it: one ✗ per
bad entry, naming the entry and the problem (beat refuses to start on the first)."""

from __future__ import annotations

import importlib
from typing import Any

from remediation.doctor import Result, fail, ok
from remediation.errors import ScheduleError
from remediation.schedule import load_schedule, validate_entry
from remediation.settings import Settings

AREA = "schedule"


def probe(settings: Settings) -> list[Result]:
    module = settings.schedule_module
    try:
        entries = load_schedule(module)
    except ScheduleError as exc:
        return _each_bad_entry(module) or [_bad(module, module, str(exc))]
    return [ok(AREA, module, "beat schedule validates", f"{len(entries)} entries")]


def _bad(module: str, entry: str, message: str) -> Result:
    return fail(
        AREA,
        entry,
        "beat schedule validates",
        message,
        f"edit {module}.py ({entry}) as the message says; beat refuses to start until then",
    )


def _each_bad_entry(module: str) -> list[Result]:
    """One row per entry that fails validation (the module imported and has a SCHEDULE)."""
    try:
        entries: Any = getattr(importlib.import_module(module), "SCHEDULE", None)
    except Exception:  # load_schedule's message says why; no second opinion needed
        return []
    if not isinstance(entries, dict):
        return []
    rows = []
    for name, entry in entries.items():
        try:
            validate_entry(str(name), entry)
        except ScheduleError as exc:
            rows.append(_bad(module, f"entry {name!s}", str(exc)))
    return rows
