"""vacuum_analyze against a real PostgreSQL: exactly the named tables, hostile names safe."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from remediation.actions.postgres import (
    AnalyzeParams,
    VacuumParams,
    analyze_tables,
    vacuum_analyze,
)
from remediation.context import ActionContext
from remediation.logging import get_logger
from tests.checks.test_postgres import HOSTILE, bloat


def last_vacuum(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT relname, last_vacuum FROM pg_stat_user_tables").fetchall()
    return dict(rows)


def test_vacuums_only_named_hostile_tables(settings_env: Any, target_db: str) -> None:
    """Hostile names are vacuumed as identifiers; other tables and the database survive."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    for name in [*HOSTILE, "y", "bystander"]:
        bloat(target_db, name)
    params = VacuumParams(target="app", tables=[{"schema": "public", "name": n} for n in HOSTILE])
    result = vacuum_analyze(ActionContext(s, get_logger()), params)
    assert result.ok and sorted(result.detail["vacuumed"]) == sorted(f"public.{n}" for n in HOSTILE)
    vacuumed = {k for k, v in last_vacuum(target_db).items() if v is not None}
    assert vacuumed == set(HOSTILE)  # "y" still exists and was not touched; neither was bystander
    assert "y" in last_vacuum(target_db)


def test_analyze_only_named_hostile_tables(settings_env: Any, target_db: str) -> None:
    """ANALYZE touches exactly the named tables, hostile names included."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    for name in [*HOSTILE, "bystander"]:
        bloat(target_db, name, delete_share=0.0)
    params = AnalyzeParams(target="app", tables=[{"name": n} for n in HOSTILE])
    result = analyze_tables(ActionContext(s, get_logger()), params)
    assert sorted(result.detail["analyzed"]) == sorted(f"public.{n}" for n in HOSTILE)
    with psycopg.connect(target_db) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL"
        )
        assert {r[0] for r in rows.fetchall()} == set(HOSTILE)


def test_missing_table_is_skipped_not_created(settings_env: Any, target_db: str) -> None:
    """A table that vanished is reported missing; nothing else happens."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    result = vacuum_analyze(
        ActionContext(s, get_logger()), VacuumParams(target="app", tables=["public.gone"])
    )
    assert (result.ok, result.changed, result.detail["missing"]) == (True, False, ["public.gone"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"tables": []},
        {"tables": "t"},
        {"tables": [{"name": ""}]},
        {"tables": ["t"], "x": 1},
        {"tables": ["t"], "target": "../etc"},
    ],  # fmt: skip
)
def test_invalid_params_are_rejected(kwargs: dict[str, Any]) -> None:
    """Missing, empty, wrong-typed and unknown kwargs fail validation."""
    with pytest.raises(ValidationError):
        VacuumParams.model_validate(kwargs)


def test_string_table_refs_split_at_first_dot() -> None:
    """'schema.table' strings become a schema and a name; bare names are in public."""
    p = VacuumParams(tables=["s.t", "plain"])
    assert [(t.schema_, t.name) for t in p.tables] == [("s", "t"), ("public", "plain")]
