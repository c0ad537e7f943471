"""Run every area's probe at once, each bounded in time, and decide what blocks.

Adding an area is one import and one entry in ``AREAS``: a module with
``probe(settings) -> list[Result]``.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from remediation.doctor import (
    SEND_TEST,
    Result,
    docker,
    fail,
    folders,
    http,
    postgres,
    prometheus,
    redis,
    schedule,
    unknown,
    webhook,
)
from remediation.doctor.enabled import enabled_actions
from remediation.redact import bounded_text, redact_text
from remediation.settings import Settings

AREAS: tuple[ModuleType, ...] = (
    postgres,
    redis,
    docker,
    prometheus,
    http,
    folders,
    webhook,
    schedule,
)
"""The probe modules, in the order the table shows them."""

ALIASES = {"folder": "folders", "proxy": "http"}
"""Row areas that differ from their module's name: `--area` takes either."""

Probe = Callable[[Settings], list[Result]]
_MESSAGE_CHARS = 300


def area_name(module: ModuleType) -> str:
    """ "postgres" for remediation.doctor.postgres: what --area takes."""
    return module.__name__.rsplit(".", 1)[-1]


def area_names() -> list[str]:
    return [area_name(m) for m in AREAS]


@dataclass(frozen=True)
class Report:
    """Every row of one doctor run, and which of them block (exit 1)."""

    rows: tuple[Result, ...]
    enabled: frozenset[str]
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0

    def blocks(self, row: Result) -> bool:
        """A ✗ blocks when nothing names a need (the core) or an enabled action needs it;
        "cannot tell" never blocks (it is shown, with what to do)."""
        if row.status != "fail":
            return False
        return not row.needed_by or bool(self.enabled.intersection(row.needed_by))

    @property
    def blocking(self) -> list[Result]:
        return [row for row in self.rows if self.blocks(row)]

    @property
    def exit_code(self) -> int:
        return 1 if self.blocking else 0

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "fail": 0, "unknown": 0}
        for row in self.rows:
            out[row.status] += 1
        out["blocking"] = len(self.blocking)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "enabled_actions": sorted(self.enabled),
            "rows": [{**row.as_dict(), "blocking": self.blocks(row)} for row in self.rows],
        }


def _crashed(area: str, exc: BaseException) -> Result:
    message = bounded_text(redact_text(f"{type(exc).__name__}: {exc}"), _MESSAGE_CHARS)
    return fail(
        area,
        "-",
        "the probe ran",
        f"the probe failed: {message}",
        "fix what the message names and run `remediation doctor` again",
    )


def _hung(area: str, timeout: float) -> Result:
    return unknown(
        area,
        "-",
        "the probe ran",
        f"no answer within {timeout:g} s",
        "check the services this area talks to answer; raise"
        " REMEDIATION_DOCTOR__PROBE_TIMEOUT_SECONDS if they are only slow",
    )


class _Call:
    """One probe in a daemon thread (a hung probe never keeps the process alive)."""

    def __init__(self, area: str, probe: Probe, settings: Settings, send_test: bool) -> None:
        self.area = area
        self.rows: list[Result] | None = None
        self.error: BaseException | None = None
        ctx = contextvars.copy_context()
        ctx.run(SEND_TEST.set, send_test)
        self.thread = threading.Thread(
            target=ctx.run, args=(self._run, probe, settings), daemon=True, name=f"doctor-{area}"
        )
        self.thread.start()

    def _run(self, probe: Probe, settings: Settings) -> None:
        try:
            self.rows = list(probe(settings))
        except BaseException as exc:  # any failure of a probe is a row, never a crash
            self.error = exc

    def result(self, deadline: float, timeout: float) -> list[Result]:
        self.thread.join(max(deadline - time.monotonic(), 0))
        if self.thread.is_alive():
            return [_hung(self.area, timeout)]
        if self.error is not None:
            return [_crashed(self.area, self.error)]
        return self.rows or []


def run_probes(
    settings: Settings,
    probes: Sequence[tuple[str, Probe]],
    *,
    timeout: float | None = None,
    send_test: bool = False,
) -> Report:
    """Run ``probes`` (area, probe) concurrently, each within ``timeout`` seconds."""
    bound = settings.doctor.probe_timeout_seconds if timeout is None else timeout
    started = time.monotonic()
    calls = [_Call(area, probe, settings, send_test) for area, probe in probes]
    deadline = started + bound
    rows: list[Result] = []
    for call in calls:
        rows += call.result(deadline, bound)
    return Report(tuple(rows), enabled_actions(settings), seconds=time.monotonic() - started)


def run(
    settings: Settings, areas: Iterable[str] | None = None, *, send_test: bool = False
) -> Report:
    """Every area's probe (or only ``areas``), concurrently; ValueError on an unknown area."""
    wanted = [ALIASES.get(a, a) for a in areas] if areas else area_names()
    unknown_areas = sorted(set(wanted) - set(area_names()))
    if unknown_areas:
        raise ValueError(f"unknown area {unknown_areas[0]!r} (known: {', '.join(area_names())})")
    probes = [(area_name(m), m.probe) for m in AREAS if area_name(m) in wanted]
    return run_probes(settings, probes, send_test=send_test)
