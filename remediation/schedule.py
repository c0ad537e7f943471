"""Load and validate beat_schedule.py: a bad entry stops start-up, never a silent skip."""

from __future__ import annotations

import importlib
from datetime import timedelta
from typing import Any

from celery.schedules import crontab, schedule
from pydantic import ValidationError

from remediation import registry
from remediation.calls import validation_message
from remediation.errors import ScheduleError, UnknownTaskError

SCHEDULE_MODULE = "beat_schedule"
_ENTRY_KEYS = {"task", "schedule", "kwargs", "options", "pin"}


def parse_schedule(value: Any) -> Any:
    """A crontab string, seconds, a timedelta or a Celery schedule -> Celery schedule."""
    if isinstance(value, schedule):
        return value
    if isinstance(value, bool):
        raise ValueError("schedule must be a crontab string or a number of seconds")
    if isinstance(value, int | float | timedelta):
        seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
        if seconds < 1:
            raise ValueError("interval must be at least 1 second")
        return schedule(timedelta(seconds=seconds))
    if isinstance(value, str):
        fields = value.split()
        if len(fields) != 5:
            raise ValueError(f"crontab {value!r} needs 5 fields: minute hour day month weekday")
        minute, hour, day, month, weekday = fields
        cron = crontab(
            minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday
        )
        return cron
    raise ValueError(f"schedule must be a crontab string or seconds, not {type(value).__name__}")


def validate_entry(name: str, entry: Any) -> dict[str, Any]:
    """One entry -> Celery beat entry, or ScheduleError naming the entry and the problem."""
    if not isinstance(entry, dict):
        raise ScheduleError(f"beat_schedule.py entry {name!r}: must be a dict")
    extra = set(entry) - _ENTRY_KEYS
    if extra or "task" not in entry or "schedule" not in entry:
        raise ScheduleError(
            f"beat_schedule.py entry {name!r}: needs 'task' and 'schedule'"
            + (f"; unknown keys {sorted(extra)}" if extra else "")
        )
    task, kwargs = entry["task"], entry.get("kwargs", {})
    try:
        spec: Any = (
            registry.get_check(task)
            if str(task).startswith(registry.CHECK_PREFIX)
            else registry.get_action(task)
        )
        if not str(task).startswith((registry.CHECK_PREFIX, registry.ACTION_PREFIX)):
            raise UnknownTaskError(f"{task!r} is not a remediation.check.* or .act.* task")
        spec.params_model.model_validate(kwargs)
        beat_schedule = parse_schedule(entry["schedule"])
    except UnknownTaskError as exc:
        raise ScheduleError(f"beat_schedule.py entry {name!r}: unknown task: {exc}") from None
    except ValidationError as exc:
        raise ScheduleError(
            f"beat_schedule.py entry {name!r}: bad kwargs: {validation_message(exc)}"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ScheduleError(f"beat_schedule.py entry {name!r}: bad schedule: {exc}") from None
    pin = entry.get("pin", False)
    if not isinstance(pin, bool):
        raise ScheduleError(f"beat_schedule.py entry {name!r}: 'pin' must be True or False")
    if pin and type(beat_schedule) is not schedule:
        raise ScheduleError(
            f"beat_schedule.py entry {name!r}: 'pin' applies to interval schedules only"
            " (crontab entries are never spread)"
        )
    return {
        "task": spec.task_name,
        "schedule": beat_schedule,
        "kwargs": dict(kwargs),
        "options": dict(entry.get("options", {})),
    }


def load_schedule(module: str = SCHEDULE_MODULE) -> dict[str, dict[str, Any]]:
    """Import the schedule module and validate every entry."""
    return load_schedule_and_pins(module)[0]


def load_schedule_and_pins(
    module: str = SCHEDULE_MODULE,
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The validated entries, and the names of the interval entries pinned to their
    interval's boundary ("pin": True: not spread, remediation.slots)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ScheduleError(f"cannot import {module}.py: {exc}") from None
    except Exception as exc:  # e.g. crontab(minute="61") raising while the file is imported
        raise ScheduleError(f"{module}.py failed to load: {type(exc).__name__}: {exc}") from None
    entries = getattr(mod, "SCHEDULE", None)
    if not isinstance(entries, dict):
        raise ScheduleError(f"{module}.py must define SCHEDULE = {{name: entry}}")
    validated = {name: validate_entry(name, entry) for name, entry in entries.items()}
    return validated, {name for name, entry in entries.items() if entry.get("pin") is True}
