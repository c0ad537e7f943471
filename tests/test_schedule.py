"""beat_schedule.py: shipped entries are valid; bad entries stop start-up with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from celery.schedules import crontab

from remediation.errors import ScheduleError
from remediation.schedule import load_schedule, validate_entry
from tests.support.env import TEST_SIGNING_KEY, clean_environ

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_schedule_is_valid_and_covers_the_cadences() -> None:
    """The schedule has a frequent sweep and daily, weekly and monthly crontab entries."""
    entries = load_schedule("beat_schedule")
    crons = [e["schedule"] for e in entries.values() if isinstance(e["schedule"], crontab)]
    assert any(
        e["schedule"].run_every.total_seconds() <= 60
        for e in entries.values()
        if not isinstance(e["schedule"], crontab)
    )
    assert any(c._orig_day_of_week == "0" for c in crons)  # weekly
    assert any(c._orig_day_of_month == "1" for c in crons)  # monthly
    assert any(c._orig_day_of_week == "*" and c._orig_day_of_month == "*" for c in crons)  # daily


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": "remediation.check.nope", "schedule": 60}, "unknown task"),
        ({"task": "celery.backend_cleanup", "schedule": 60}, "unknown task"),
        ({"task": "remediation.check.redis_job_queue", "schedule": "61 * * * *"}, "bad schedule"),
        ({"task": "remediation.check.redis_job_queue", "schedule": "* * *"}, "5 fields"),
        ({"task": "remediation.check.redis_job_queue", "schedule": 0}, "at least 1 second"),
        (
            {"task": "remediation.check.redis_job_queue", "schedule": 60, "kwargs": {"x": 1}},
            "bad kwargs",
        ),
        ({"task": "remediation.check.redis_job_queue"}, "needs 'task' and 'schedule'"),
        ({"task": "remediation.check.redis_job_queue", "schedule": 60, "args": []}, "unknown keys"),
    ],
)
def test_bad_entries_are_errors_naming_the_entry(entry: dict[str, object], message: str) -> None:
    """Unknown tasks, bad crontabs, bad kwargs and malformed entries are ScheduleErrors."""
    with pytest.raises(ScheduleError, match=f"'bad-entry'.*{message}"):
        validate_entry("bad-entry", entry)


def test_beat_refuses_to_start_with_a_bad_schedule(tmp_path: Path) -> None:
    """`celery beat` with an unknown task in the schedule exits with the entry's name."""
    (tmp_path / "bad_schedule.py").write_text(
        'SCHEDULE = {"typo": {"task": "remediation.check.redis_jobqueue", "schedule": 60}}\n'
    )
    env = clean_environ()
    env.update(
        REMEDIATION_SCHEDULE_MODULE="bad_schedule",
        PYTHONPATH=str(tmp_path),
        REMEDIATION_SIGNING_KEY=TEST_SIGNING_KEY,
    )
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "celery"), "-A", "remediation", "beat"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "'typo'" in proc.stderr and "unknown task" in proc.stderr
