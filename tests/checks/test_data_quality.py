"""postgres_data_quality: configured SQL rules and freshness, against real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from remediation.checks import data_quality
from remediation.checks.data_quality import DataQualityParams, postgres_data_quality
from remediation.context import CheckContext
from remediation.logging import get_logger

SCRAPER_SCHEMA = """
CREATE TABLE monitored_urls (id int PRIMARY KEY, domain text);
CREATE TABLE price_history (url_id int, price numeric, extraction_confidence float8,
                            checked_at timestamptz DEFAULT now());
INSERT INTO monitored_urls VALUES (1, 'good.example'), (2, 'bad.example');
INSERT INTO price_history (url_id, price, extraction_confidence) VALUES
  (1, 10, 0.95), (1, 11, 0.9), (2, NULL, 0.5), (2, NULL, 0.6);
"""


def run(s: Any, **params: Any) -> list[Any]:
    return postgres_data_quality(CheckContext(s, get_logger()), DataQualityParams(**params))


def test_runbook_defaults_find_low_confidence_and_missing_prices(
    settings_env: Any, target_db: str
) -> None:
    """The shipped runbook 001 rules flag the low-confidence domain and the null prices."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute(SCRAPER_SCHEMA)
    found = {(f.subject, f.kind, f.severity.value) for f in run(s, target="app")}
    assert found == {
        ("extraction_confidence:bad.example", "postgres_data_quality_breach", "high"),
        ("missing_price_share:price_history", "postgres_data_quality_breach", "warning"),
    }


def test_rule_that_cannot_run_is_an_info_finding(settings_env: Any, target_db: str) -> None:
    """Missing tables make an info finding per rule, not an exception."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    found = run(s, target="app")
    assert {(f.subject, f.kind, f.severity.value) for f in found} == {
        ("extraction_confidence", "postgres_data_quality_error", "info"),
        ("missing_price_share", "postgres_data_quality_error", "info"),
    }
    assert "does not exist" in found[0].summary


def test_rules_run_read_only(settings_env: Any, target_db: str) -> None:
    """A rule that tries to write fails in its read-only transaction; the data survives."""
    rules = [
        {
            "name": "sneaky",
            "sql": "DELETE FROM keep RETURNING 'x', 1",
            "threshold": 0,
            "direction": "above",
        }
    ]
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_POSTGRES__DATA_QUALITY=json.dumps(rules),
    )
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE keep (id int); INSERT INTO keep VALUES (1)")
    (finding,) = run(s, target="app")
    assert finding.kind == "postgres_data_quality_error" and "read-only" in finding.summary
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM keep").fetchone() == (1,)


def test_freshness_with_hostile_names_and_empty_table(settings_env: Any, target_db: str) -> None:
    """Newest row older than the interval, or no rows at all, is stale; fresh data passes."""
    fresh = [
        {
            "name": "old",
            "table": 'public.x"; drop table keep; --',
            "column": "seen at",
            "max_age_seconds": 60,
        },
        {"name": "empty", "table": "nothing", "column": "ts", "max_age_seconds": 60},
        {"name": "recent", "table": "recent", "column": "ts", "max_age_seconds": 3600},
    ]
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_POSTGRES__DATA_QUALITY="[]",
        REMEDIATION_POSTGRES__FRESHNESS=json.dumps(fresh),
    )
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute(
            'CREATE TABLE keep (id int); CREATE TABLE "x""; drop table keep; --"'
            ' ("seen at" timestamptz); INSERT INTO "x""; drop table keep; --"'
            " VALUES (now() - interval '2 hours');"
            " CREATE TABLE nothing (ts timestamptz); CREATE TABLE recent (ts timestamptz);"
            " INSERT INTO recent VALUES (now())"
        )
    found = {f.subject: f for f in run(s, target="app")}
    assert set(found) == {"old", "empty"}
    assert found["old"].kind == "postgres_data_stale" and 7000 < found["old"].observed < 7400
    assert found["empty"].observed is None
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT to_regclass('keep') IS NOT NULL").fetchone() == (True,)


def test_rule_selection_by_name(settings_env: Any, target_db: str) -> None:
    """`rules` runs only the named rules."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    assert [f.subject for f in run(s, target="app", rules=["missing_price_share"])] == [
        "missing_price_share"
    ]


def test_a_rule_is_exactly_one_statement_and_cannot_write(
    settings_env: Any, target_db: str
) -> None:
    """A second statement ("COMMIT; CREATE TABLE ...") is a rule error that creates nothing, a
    rule that writes is refused by READ ONLY, and the rules after them still run."""
    hostile = {
        "chained": "COMMIT; CREATE TABLE evil (); SELECT 'x', 1",
        "chained_insert": "SELECT 'x', 1; INSERT INTO keep VALUES (2)",
        "commit_only": "COMMIT",
        "insert": "INSERT INTO keep VALUES (3) RETURNING 'x', 1",
        "create": "CREATE TABLE evil2 (id int)",
        "writable_cte": "WITH w AS (DELETE FROM keep RETURNING id) SELECT 'x', count(*) FROM w",
    }
    rules = [
        {"name": n, "sql": q, "threshold": 0, "direction": "above"} for n, q in hostile.items()
    ]
    rules.append(
        {
            "name": "honest",
            "sql": "SELECT 'rows', count(*) FROM keep WHERE '%' = '%'",
            "threshold": 0,
            "direction": "above",
        }
    )
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_POSTGRES__DATA_QUALITY=json.dumps(rules),
    )
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE keep (id int); INSERT INTO keep VALUES (1)")
    found = {f.subject: f for f in run(s, target="app")}
    assert {n for n, f in found.items() if f.kind == "postgres_data_quality_error"} == set(hostile)
    for name in ("chained", "chained_insert"):
        assert "exactly one SQL statement" in found[name].summary
    for name in ("insert", "create", "writable_cte"):
        assert "read-only transaction" in found[name].summary, found[name].summary
    honest = found["honest:rows"]
    assert honest.kind == "postgres_data_quality_breach" and honest.observed == 1
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT to_regclass('evil'), to_regclass('evil2')").fetchone() == (
            None,
            None,
        )
        assert conn.execute("SELECT array_agg(id) FROM keep").fetchone() == ([1],)


def test_rules_and_freshness_run_under_a_statement_timeout(
    settings_env: Any, target_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow rule and a slow freshness table are cancelled by the statement timeout and
    reported as rule errors."""
    monkeypatch.setattr(data_quality, "STATEMENT_TIMEOUT_MS", 200)
    rules = [
        {
            "name": "slow",
            "sql": "SELECT 'x', 1 FROM pg_sleep(30)",
            "threshold": 0,
            "direction": "above",
        }
    ]
    fresh = [{"name": "slow_table", "table": "slow", "column": "ts", "max_age_seconds": 60}]
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_POSTGRES__DATA_QUALITY=json.dumps(rules),
        REMEDIATION_POSTGRES__FRESHNESS=json.dumps(fresh),
    )
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("CREATE VIEW slow AS SELECT now() AS ts FROM pg_sleep(30)")
    found = {f.subject: f for f in run(s, target="app")}
    assert set(found) == {"slow", "slow_table"}
    for finding in found.values():
        assert finding.kind == "postgres_data_quality_error"
        assert "statement timeout" in finding.summary, finding.summary
