"""PostgreSQL rules: maintenance, sessions, health, data quality (runbooks 001, 002, 004)."""

from __future__ import annotations

from remediation.findings import Severity
from remediation.playbook.rule import Rule, notify_params, table, target

MAINTENANCE: list[Rule] = [
    Rule(
        "postgres_dead_tuples_high",
        "vacuum_analyze",
        table,
        "001 Weekly Operations 1. Database Maintenance: VACUUM ANALYZE",
    ),
    Rule(
        "postgres_stats_stale",
        "analyze_tables",
        table,
        "001 Weekly Operations 1. Database Maintenance: ANALYZE",
    ),
    Rule(
        "postgres_idle_in_transaction",
        "terminate_idle_transactions",
        target,
        "002 Database Issues 3. Connection Pool: check for connection leaks",
    ),
    Rule(
        "postgres_long_query",
        "cancel_long_queries",
        target,
        "002 Database Issues 2. Slow Queries; 001 System Overload Response (opt-in)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_unreachable",
        "notify",
        notify_params,
        "002 Escalation: database is down: Critical - contact DBA immediately",
        min_severity=Severity.CRITICAL,
    ),
    Rule(
        "postgres_connections_high",
        "notify",
        notify_params,
        "002 Database Issues: connection pool exhaustion; 004 usage > 80 %",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_pool_exhausted",
        "notify",
        notify_params,
        "002 Escalation: pool exhausted: High - increase pool size",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_latency_high",
        "notify",
        notify_params,
        "002 Database Issues: high query times",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_slow_queries_found",
        "notify",
        notify_params,
        "002 Escalation: queries are slow: High; Performance Degradation P95 > 2 s / 5 s",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_database_growth",
        "notify",
        notify_params,
        "002 Disk Space Issues: check database size",
    ),
]
"""Maintenance, sessions and health of the monitored databases."""


DATA: list[Rule] = [
    Rule(
        "postgres_data_quality_breach",
        "notify",
        notify_params,
        "001 Data Quality Issues: check extraction accuracy (fixes are human: extractors)",
    ),
    Rule(
        "postgres_data_stale",
        "notify",
        notify_params,
        "004 Data Freshness Issues: data age exceeds update frequency",
    ),
]
"""Data quality and freshness: fixes are human, the rules notify."""
