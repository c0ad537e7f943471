"""CPU seconds spent per process group during a benchmark phase, read from /proc.

A benchmark on a small machine is bound by CPU, not by any one process's latency: the
client, the worker's main process and its pool children, redis-server and the PostgreSQL
backends all share the cores. Throughput on a busy machine moves with whatever else runs;
the CPU each group spends per task does not (much), so it is reported beside the rates and
tells where a difference comes from."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    """The direct children of pid (the worker's pool processes)."""
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


class CpuMeter:
    """groups: name -> a function giving the pids of that group now. measure(phase) runs
    phase and returns CPU milliseconds per unit of work by group (and 'total')."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    def snapshot(self) -> dict[tuple[str, int], float]:
        return {(g, pid): cpu_seconds(pid) for g, pids in self.groups.items() for pid in pids()}

    def per_unit(
        self, before: dict[tuple[str, int], float], after: dict[tuple[str, int], float], n: int
    ) -> dict[str, float]:
        spent: dict[str, float] = dict.fromkeys(self.groups, 0.0)
        for (group, pid), seconds in after.items():
            spent[group] += seconds - before.get((group, pid), 0.0)
        out = {g: round(s * 1000 / n, 2) for g, s in spent.items()}
        out["total"] = round(sum(spent.values()) * 1000 / n, 2)
        return out
