"""Beat with redbeat: scheduled checks reach the workers; one beat active, a standby takes over."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.processes import Beat

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = """
SCHEDULE = {
    "probe": {
        "task": "remediation.check.redis_job_queue",
        "schedule": 1,
        "kwargs": {"target": "self", "key": "beat_probe"},
    },
}
"""


@pytest.fixture
def beat_env(worker_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    (tmp_path / "fast_schedule.py").write_text(SCHEDULE)
    return {
        **worker_env,
        "REMEDIATION_SCHEDULE_MODULE": "fast_schedule",
        "PYTHONPATH": str(tmp_path),
        "REMEDIATION_CELERY__REDBEAT_LOCK_TIMEOUT": "10",
        "REMEDIATION_CELERY__BEAT_MAX_LOOP_INTERVAL": "1",
    }


@pytest.fixture
def beats(beat_env: dict[str, str], tmp_path: Path, workers: object) -> Iterator[list[Beat]]:
    started: list[Beat] = []

    def start() -> Beat:
        b = Beat(beat_env, tmp_path / f"beat{len(started)}.log")
        started.append(b)
        return b

    yield start  # type: ignore[misc]
    for b in started:
        b.kill()


def probe_runs(audit: Audit) -> int:
    rows = audit.rows(
        "SELECT count(*) AS n FROM check_runs WHERE params->>'key' = 'beat_probe' AND status = 'ok'"
    )
    return int(rows[0]["n"])


def test_one_active_beat_and_standby_takes_over(beats, audit: Audit) -> None:  # type: ignore[no-untyped-def]
    """Two beats: checks fire at one beat's rate; killing it, the standby carries on."""
    active = beats()
    wait_for(lambda: probe_runs(audit) >= 3, 60, 0.5, "first scheduled checks")
    standby = beats()
    time.sleep(3)  # let the standby start and block on the lock
    start, t0 = probe_runs(audit), time.monotonic()
    time.sleep(8)
    rate = (probe_runs(audit) - start) / (time.monotonic() - t0)
    assert 0.5 <= rate <= 1.5, f"{rate:.2f} runs/s: two beats would fire about 2/s"
    active.kill()
    killed_at, before = time.monotonic(), probe_runs(audit)
    wait_for(lambda: probe_runs(audit) >= before + 3, 60, 0.5, "standby taking over")
    took_over = time.monotonic() - killed_at
    assert took_over < 30, f"standby took {took_over:.0f}s (lock timeout 10s)"
    assert standby.proc.poll() is None
