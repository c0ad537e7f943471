"""postgres_data_quality: configured SQL rules and freshness, against real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import psycopg

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
    rules = [{"name": "sneaky", "sql": "DELETE FROM keep RETURNING 'x', 1", "threshold": 0,
              "direction": "above"}]  # fmt: skip
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db,
                     REMEDIATION_POSTGRES__DATA_QUALITY=json.dumps(rules))  # fmt: skip
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE keep (id int); INSERT INTO keep VALUES (1)")
    (finding,) = run(s, target="app")
    assert finding.kind == "postgres_data_quality_error" and "read-only" in finding.summary
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM keep").fetchone() == (1,)


def test_freshness_with_hostile_names_and_empty_table(settings_env: Any, target_db: str) -> None:
    """Newest row older than the interval, or no rows at all, is stale; fresh data passes."""
    fresh = [
        {"name": "old", "table": 'public.x"; drop table keep; --', "column": "seen at",
         "max_age_seconds": 60},
        {"name": "empty", "table": "nothing", "column": "ts", "max_age_seconds": 60},
        {"name": "recent", "table": "recent", "column": "ts", "max_age_seconds": 3600},
    ]  # fmt: skip
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db,
                     REMEDIATION_POSTGRES__DATA_QUALITY="[]",
                     REMEDIATION_POSTGRES__FRESHNESS=json.dumps(fresh))  # fmt: skip
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute('CREATE TABLE keep (id int); CREATE TABLE "x""; drop table keep; --"'
                     ' ("seen at" timestamptz); INSERT INTO "x""; drop table keep; --"'
                     " VALUES (now() - interval '2 hours');"
                     " CREATE TABLE nothing (ts timestamptz); CREATE TABLE recent (ts timestamptz);"
                     " INSERT INTO recent VALUES (now())")  # fmt: skip
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
