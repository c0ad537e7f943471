"""Data quality and freshness (runbook 001 "Data Quality Issues", runbook 004 freshness).

Operators add rules in configuration (REMEDIATION_POSTGRES__DATA_QUALITY and
REMEDIATION_POSTGRES__FRESHNESS) without writing Python. Rule SQL runs in a read-only
transaction with a statement timeout, as exactly one statement: it is sent as a prepared
statement (the extended protocol), so "COMMIT; CREATE TABLE ..." is an error, not a way out
of the read-only transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from remediation.clients import pg
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.redact import redact_text
from remediation.registry import check
from remediation.settings import DataQualityRule, FreshnessRule
from remediation.tables import TableRef

STATEMENT_TIMEOUT_MS = 30_000
MAX_FINDINGS_PER_RULE = 50


class DataQualityParams(CheckParams):
    rules: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=100, description="rule names to run; default: all"
    )


def _finding(params: DataQualityParams, subject: str, kind: str, sev: str, **kw: Any) -> Finding:
    return Finding(
        check="postgres_data_quality",
        target=params.target,
        subject=subject,
        kind=kind,
        severity=Severity(sev),
        **kw,
    )


def _breaches(rule: DataQualityRule, rows: list[tuple[Any, ...]]) -> list[tuple[str, float]]:
    out = []
    for row in rows:
        if len(row) < 2 or row[1] is None:
            continue
        value = float(row[1])
        past = value < rule.threshold if rule.direction == "below" else value > rule.threshold
        if past:
            out.append((str(row[0]), value))
    return out[:MAX_FINDINGS_PER_RULE]


@contextmanager
def _read_only(conn: psycopg.Connection) -> Iterator[None]:
    """One READ ONLY transaction with a statement timeout, rolled back on any error."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
        yield


def _run_rule(conn: psycopg.Connection, rule: DataQualityRule) -> list[tuple[Any, ...]]:
    with _read_only(conn):
        try:
            # prepare=True sends the extended protocol: one statement only. The simple
            # protocol would run "COMMIT; CREATE TABLE ..." past the read-only transaction.
            cur = conn.execute(rule.sql.encode(), prepare=True)
        except psycopg.errors.SyntaxError as exc:
            if "multiple commands" in str(exc):
                raise psycopg.ProgrammingError("a rule must be exactly one SQL statement") from exc
            raise
        return cur.fetchall()


def _newest_age(conn: psycopg.Connection, rule: FreshnessRule) -> tuple[Any, float | None]:
    table = TableRef.model_validate(rule.table)
    query = sql.SQL("SELECT max({col}), extract(epoch FROM now() - max({col})) FROM {tbl}").format(
        col=sql.Identifier(rule.column), tbl=table.identifier
    )
    with _read_only(conn):
        row = conn.execute(query).fetchone()
    newest, age = row if row else (None, None)
    return newest, None if age is None else float(age)


@check("postgres_data_quality")
def postgres_data_quality(ctx: CheckContext, params: DataQualityParams) -> list[Finding]:
    """Named SQL data-quality rules and data-freshness rules against one database.

    Runbook 001 "Data Quality Check": hourly extraction confidence per domain below 0.8,
    share of rows with a null price (shipped defaults; they expect price_history and
    monitored_urls). Runbook 004 "Data Freshness": the newest timestamp of a table older
    than its expected update interval. A rule that cannot run (missing table, syntax)
    is reported as postgres_data_quality_error (info), never a crash."""
    cfg = ctx.settings.postgres
    wanted = set(params.rules) if params.rules is not None else None
    findings: list[Finding] = []
    with pg.connect(
        ctx.postgres_dsn(params.target), autocommit=False, timeout=cfg.connect_timeout_seconds
    ) as conn:
        for rule in cfg.data_quality:
            if wanted is not None and rule.name not in wanted:
                continue
            try:
                rows = _run_rule(conn, rule)
            except psycopg.Error as exc:
                findings.append(_error(params, rule.name, exc))
                continue
            for subject, value in _breaches(rule, rows):
                findings.append(
                    _finding(
                        params,
                        f"{rule.name}:{subject}",
                        "postgres_data_quality_breach",
                        rule.severity,
                        observed=round(value, 4),
                        threshold=rule.threshold,
                        evidence={
                            "rule": rule.name,
                            "direction": rule.direction,
                            "value": value,
                            "description": rule.description,
                        },
                        summary=(
                            f"{rule.name} for {subject}: {value:.4g} is {rule.direction} "
                            f"{rule.threshold:g}"
                        ),
                    )
                )
        for fresh in cfg.freshness:
            if wanted is not None and fresh.name not in wanted:
                continue
            try:
                newest, age = _newest_age(conn, fresh)
            except psycopg.Error as exc:
                findings.append(_error(params, fresh.name, exc))
                continue
            if age is None or age > fresh.max_age_seconds:
                seen = "no rows" if age is None else f"newest is {age:.0f}s old"
                summary = f"{fresh.table}.{fresh.column}: {seen}"
                summary += f" (expected under {fresh.max_age_seconds}s)"
                findings.append(
                    _finding(
                        params,
                        fresh.name,
                        "postgres_data_stale",
                        fresh.severity,
                        observed=None if age is None else round(age),
                        threshold=fresh.max_age_seconds,
                        evidence={
                            "table": fresh.table,
                            "column": fresh.column,
                            "newest": str(newest) if newest is not None else None,
                        },
                        summary=summary,
                    )
                )
    return findings


def _error(params: DataQualityParams, name: str, exc: psycopg.Error) -> Finding:
    message = redact_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return _finding(
        params,
        name,
        "postgres_data_quality_error",
        "info",
        evidence={"rule": name, "error": type(exc).__name__},
        summary=f"rule {name} could not run: {message}",
    )
