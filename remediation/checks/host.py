"""Runbook 002 "Disk Space Issues" and "Memory Issues" on the host the worker runs on.

These read the worker's own host: with workers on several machines, route
remediation.check.host_* and remediation.act.cleanup_disk to one queue per host.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check
from remediation.settings import HostSettings

MEMINFO = "/proc/meminfo"


class HostDiskParams(CheckParams):
    """Mounts and bands come from REMEDIATION_HOST__*; target only names the host."""


class HostMemoryParams(CheckParams):
    """The threshold is REMEDIATION_HOST__MEMORY_HIGH_PERCENT; target only names the host."""


def disk_band(percent: float, cfg: HostSettings) -> tuple[Severity, float] | None:
    """The most severe runbook band percent is past (> 95 critical, > 90 high, > 80 medium)."""
    for severity, limit in (
        (Severity.CRITICAL, cfg.disk_critical_percent),
        (Severity.HIGH, cfg.disk_high_percent),
        (Severity.WARNING, cfg.disk_warning_percent),
    ):
        if percent > limit:
            return severity, limit
    return None


def disk_usage(path: str) -> dict[str, Any]:
    """Space as df shows it (used / (used + available to users)) and inodes, of one mount."""
    usage, vfs = shutil.disk_usage(path), os.statvfs(path)
    usable = usage.used + usage.free
    inodes_used = vfs.f_files - vfs.f_ffree
    inodes_usable = inodes_used + vfs.f_favail
    return {
        "total_bytes": usage.total,
        "used_bytes": usage.used,
        "free_bytes": usage.free,
        "used_percent": round(usage.used / usable * 100, 3) if usable else 0.0,
        "inodes_total": vfs.f_files,
        "inodes_free": vfs.f_favail,
        "inodes_used_percent": round(inodes_used / inodes_usable * 100, 3)
        if inodes_usable
        else None,  # file systems without an inode table (btrfs) report 0
    }


def _mount_findings(params: HostDiskParams, cfg: HostSettings, mount: str) -> list[Finding]:
    host = socket.gethostname()
    try:
        usage = disk_usage(mount)
    except OSError as exc:
        return [
            Finding(
                check="host_disk",
                target=params.target,
                subject=mount,
                kind="host_disk_unreadable",
                severity=Severity.WARNING,
                evidence={"host": host, "error": f"{type(exc).__name__}: {exc}"},
                summary=f"cannot read disk usage of {mount} on {host}: {exc}",
            )
        ]
    findings = []
    for kind, field, what in (
        ("host_disk_full", "used_percent", "space"),
        ("host_inodes_full", "inodes_used_percent", "inodes"),
    ):
        percent = usage[field]
        hit = None if percent is None else disk_band(percent, cfg)
        if hit:
            findings.append(
                Finding(
                    check="host_disk",
                    target=params.target,
                    subject=mount,
                    kind=kind,
                    severity=hit[0],
                    observed=percent,
                    threshold=hit[1],
                    evidence={"host": host, **usage},
                    summary=f"{mount} on {host}: {percent:.1f} % of {what} used",
                )
            )
    return findings


@check("host_disk")
def host_disk(ctx: CheckContext, params: HostDiskParams) -> list[Finding]:
    """Disk space and inodes of each REMEDIATION_HOST__MOUNTS path (runbook 002 "Disk Space").

    Used share as df shows it: past DISK_WARNING_PERCENT (80, medium) is a warning, past
    DISK_HIGH_PERCENT (90) high, past DISK_CRITICAL_PERCENT (95) critical: host_disk_full;
    the same bands on inodes are host_inodes_full. A mount that cannot be read is
    host_disk_unreadable. cleanup_disk frees space in REMEDIATION_HOST__CLEANUP_DIRS."""
    cfg = ctx.settings.host
    return [f for mount in cfg.mounts for f in _mount_findings(params, cfg, mount)]


def read_meminfo(path: str = MEMINFO) -> dict[str, int]:
    """/proc/meminfo as {field: bytes} (the kernel reports kB)."""
    values: dict[str, int] = {}
    with open(path, encoding="ascii") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                scale = 1024 if parts[1:] == ["kB"] else 1
                values[name.strip()] = int(parts[0]) * scale
    return values


def memory_used_percent(info: dict[str, int]) -> tuple[float, int]:
    """(used percent, available bytes): MemTotal minus MemAvailable, or on kernels before
    3.14 minus MemFree + Buffers + Cached."""
    total = info["MemTotal"]
    available = info.get("MemAvailable")
    if available is None:
        available = info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)
    return round((total - available) / total * 100, 3), available


@check("host_memory")
def host_memory(ctx: CheckContext, params: HostMemoryParams) -> list[Finding]:
    """Memory in use on the worker's host from /proc/meminfo (runbook 002 "Memory Issues").

    MemTotal minus MemAvailable (what the kernel could hand out without swapping) past
    REMEDIATION_HOST__MEMORY_HIGH_PERCENT is host_memory_high, high ("Memory > 90 %: High -
    investigate immediately"). Inside a container this is the host's memory, not the
    container's limit. Nothing acts on it automatically."""
    limit = ctx.settings.host.memory_high_percent
    info = read_meminfo()
    percent, available = memory_used_percent(info)
    if percent <= limit:
        return []
    host = socket.gethostname()
    evidence = {
        "host": host,
        "total_bytes": info["MemTotal"],
        "available_bytes": available,
        "swap_free_bytes": info.get("SwapFree"),
    }
    return [
        Finding(
            check="host_memory",
            target=params.target,
            kind="host_memory_high",
            severity=Severity.HIGH,
            observed=percent,
            threshold=limit,
            evidence=evidence,
            summary=f"{percent:.1f} % of memory in use on {host}",
        )
    ]
