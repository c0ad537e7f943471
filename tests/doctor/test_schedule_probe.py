"""The schedule probe: the shipped beat_schedule.py is ✓; a schedule with bad entries is one
✗ per bad entry, naming it and the problem; a module that does not import is one ✗."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from remediation.doctor import schedule

BAD = """
SCHEDULE = {
    "fine": {"task": "remediation.check.redis_job_queue", "schedule": 60,
             "kwargs": {"target": "self"}},
    "typo": {"task": "remediation.check.redis_job_queu", "schedule": 60},
    "bad-cron": {"task": "remediation.check.redis_job_queue", "schedule": "61 * * * *",
                 "kwargs": {"target": "self"}},
}
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a schedule module under a fresh name on sys.path; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(text: str) -> str:
        name = f"doctor_schedule_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(text)
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return write


def test_shipped_schedule_is_ok(settings_env: Callable[..., Any]) -> None:
    """beat_schedule.py as shipped validates."""
    (row,) = schedule.probe(settings_env())
    assert row.status == "ok" and row.target == "beat_schedule"


def test_each_bad_entry_is_a_fail_row(
    settings_env: Callable[..., Any], module: Callable[[str], str]
) -> None:
    """An unknown task and a bad crontab: two ✗, each naming its entry; the good entry is not."""
    name = module(BAD)
    rows = schedule.probe(settings_env(REMEDIATION_SCHEDULE_MODULE=name))
    assert {r.target for r in rows} == {"entry typo", "entry bad-cron"}
    assert all(r.status == "fail" and not r.needed_by for r in rows)
    typo = next(r for r in rows if r.target == "entry typo")
    assert "unknown task" in typo.detail and f"edit {name}.py" in typo.fix


def test_module_that_does_not_import_is_one_fail_row(
    settings_env: Callable[..., Any], module: Callable[[str], str]
) -> None:
    """A syntax error in the schedule file is one ✗ saying it failed to load."""
    name = module("SCHEDULE = {\n")
    (row,) = schedule.probe(settings_env(REMEDIATION_SCHEDULE_MODULE=name))
    assert row.status == "fail" and name in row.detail
