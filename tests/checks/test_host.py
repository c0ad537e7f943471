"""host_disk and host_memory against the real file system and /proc/meminfo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from remediation.checks.host import (
    HostDiskParams,
    HostMemoryParams,
    disk_usage,
    host_disk,
    host_memory,
    memory_used_percent,
    read_meminfo,
)
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import get_logger


def disk(settings_env: Any, mount: Path, bands: tuple[float, float, float]) -> list[Finding]:
    s = settings_env(
        REMEDIATION_HOST__MOUNTS=json.dumps([str(mount)]),
        REMEDIATION_HOST__DISK_WARNING_PERCENT=str(bands[0]),
        REMEDIATION_HOST__DISK_HIGH_PERCENT=str(bands[1]),
        REMEDIATION_HOST__DISK_CRITICAL_PERCENT=str(bands[2]),
    )
    return host_disk(CheckContext(s, get_logger()), HostDiskParams())


def test_disk_bands_around_real_usage(settings_env: Any, tmp_path: Path) -> None:
    """Bands below the real usage of tmp_path's file system raise the matching severity; above, none."""
    used = disk_usage(str(tmp_path))["used_percent"]
    if not 0.003 < used < 99.998:
        pytest.skip(f"file system of {tmp_path} is {used} % used")
    full = {f.kind: f for f in disk(settings_env, tmp_path, (0.001, 0.002, 0.003))}
    assert (full["host_disk_full"].severity.value, full["host_disk_full"].subject) == (
        "critical",
        str(tmp_path),
    )
    assert full["host_disk_full"].observed == pytest.approx(used, abs=1)
    (warning,) = [
        f
        for f in disk(settings_env, tmp_path, (0.001, 99.998, 99.999))
        if f.kind == "host_disk_full"
    ]
    assert (warning.severity.value, warning.threshold) == ("warning", 0.001)
    assert [
        f
        for f in disk(settings_env, tmp_path, (99.997, 99.998, 99.999))
        if f.kind == "host_disk_full"
    ] == []


def test_missing_mount_is_reported_not_raised(settings_env: Any, tmp_path: Path) -> None:
    """A configured mount that does not exist is a host_disk_unreadable finding."""
    (found,) = disk(settings_env, tmp_path / "absent", (80, 90, 95))
    assert (found.kind, found.subject) == ("host_disk_unreadable", str(tmp_path / "absent"))


def test_memory_reads_proc_meminfo(settings_env: Any) -> None:
    """Used memory is MemTotal minus MemAvailable from /proc/meminfo, high past MEMORY_HIGH_PERCENT."""
    lines = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, available = (int(lines[k].split()[0]) for k in ("MemTotal", "MemAvailable"))
    s = settings_env(REMEDIATION_HOST__MEMORY_HIGH_PERCENT="0.001")
    (found,) = host_memory(CheckContext(s, get_logger()), HostMemoryParams())
    assert (found.kind, found.severity.value) == ("host_memory_high", "high")
    assert found.observed == pytest.approx((total - available) / total * 100, abs=5)
    assert found.evidence["total_bytes"] == total * 1024
    s = settings_env(REMEDIATION_HOST__MEMORY_HIGH_PERCENT="100")
    assert host_memory(CheckContext(s, get_logger()), HostMemoryParams()) == []


def test_meminfo_without_memavailable(tmp_path: Path) -> None:
    """Kernels without MemAvailable count MemFree + Buffers + Cached as available."""
    path = tmp_path / "meminfo"
    path.write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n")
    assert memory_used_percent(read_meminfo(str(path))) == (60.0, 400 * 1024)
