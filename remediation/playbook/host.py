"""Host and cache rules: Redis as a cache, disk and memory of the host (runbook 002)."""

from __future__ import annotations

from remediation.findings import Severity
from remediation.playbook.rule import Rule, notify_params, state_self

CACHE: list[Rule] = [
    Rule(
        "redis_unreachable",
        "notify",
        notify_params,
        "002 Redis/Cache Issues: connection issues (Redis down)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "redis_memory_high",
        "notify",
        notify_params,
        "002 Redis/Cache Issues: check Redis memory usage (a LRU cache may sit near maxmemory)",
    ),
    Rule(
        "redis_cache_miss_high",
        "notify",
        notify_params,
        "002 Escalation: cache misses > 50 %: High - investigate",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "redis_evictions",
        "notify",
        notify_params,
        "002 Redis/Cache Issues: review caching strategies (keys evicted)",
    ),
]
"""Redis as a cache."""


HOST: list[Rule] = [
    Rule(
        "host_disk_full",
        "cleanup_disk",
        state_self,
        "002 Disk Space Issues: clean up old log files, remove temporary files",
    ),
    Rule(
        "host_disk_full",
        "notify",
        notify_params,
        "002 Escalation: disk > 95 %: Critical - immediate cleanup",
        min_severity=Severity.CRITICAL,
    ),
    Rule(
        "host_inodes_full",
        "cleanup_disk",
        state_self,
        "002 Disk Space Issues: remove temporary files (inodes)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "host_memory_high",
        "notify",
        notify_params,
        "002 Escalation: memory > 90 %: High - investigate immediately",
        min_severity=Severity.HIGH,
    ),
]
"""Disk and memory of the host."""
