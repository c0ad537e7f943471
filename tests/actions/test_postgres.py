"""vacuum_analyze and analyze_tables against a real PostgreSQL: exactly the named tables,
hostile names safe, names resolved to the catalog's spelling before any guard."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql
from pydantic import ValidationError

from remediation.actions.postgres import (
    AnalyzeParams,
    VacuumParams,
    analyze_tables,
    plan_analyze,
    plan_vacuum,
    resolve_tables,
    vacuum_analyze,
)
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.runner import Runner
from tests.support.base import wait_for
from tests.support.postgres import HOSTILE, bloat
from tests.support.runner import Recorder


def last_vacuum(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT relname, last_vacuum FROM pg_stat_user_tables").fetchall()
    return dict(rows)


def resolved(s: Any, target: str, tables: list[Any]) -> Any:
    return resolve_tables(CheckContext(s, get_logger()), VacuumParams(target=target, tables=tables))


def create(dsn: str, *names: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            ident = sql.Identifier("public", name)
            conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(ident))
            conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(ident))


def analyze_count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = %s", (table,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_vacuums_only_named_hostile_tables(settings_env: Any, target_db: str) -> None:
    """Hostile names are vacuumed as identifiers; other tables and the database survive."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    for name in [*HOSTILE, "y", "bystander"]:
        bloat(target_db, name)
    params = VacuumParams(target="app", tables=[{"schema": "public", "name": n} for n in HOSTILE])
    assert resolved(s, "app", list(params.tables)).params == params.model_copy(
        update={"tables": sorted(params.tables, key=str)}
    )  # the resolve step finds every hostile name as it is
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
    """A table that vanished is reported missing next to the one vacuumed; a call naming
    only missing tables is refused, by the resolve step and by the action itself."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    create(target_db, "here")
    ctx = ActionContext(s, get_logger(), facts={"missing": ["public.never"]})
    result = vacuum_analyze(ctx, VacuumParams(target="app", tables=["public.gone", "here"]))
    assert (result.ok, result.changed) == (True, True)
    assert result.detail["missing"] == ["public.never", "public.gone"]
    assert result.detail["vacuumed"] == ["public.here"]
    with pytest.raises(Refused, match=r"no such table on app: public\.gone$"):
        vacuum_analyze(ActionContext(s, get_logger()), VacuumParams(target="app", tables=["gone"]))
    with pytest.raises(Refused, match=r"on app: public\.GONE, public\.gone, s\.x$"):
        resolved(s, "APP", ["gone", "s.x", "public.GONE"])
    with psycopg.connect(target_db) as conn:
        rows = conn.execute("SELECT relname FROM pg_class WHERE relname ILIKE 'gone'")
        assert rows.fetchall() == []


def test_resolve_names_the_catalogs_tables_once_each(settings_env: Any, target_db: str) -> None:
    """The target is spelled as configured; "PUBLIC.T1", "t1" and "public.t1" are one
    table; a quoted mixed-case table is found from any case; an exact match wins over a
    case-insensitive one, and a name only ambiguous matches count as missing."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    create(target_db, "t1", "Mixed", "dup", "DUP")
    out = resolved(s, "aPp", ["PUBLIC.T1", "t1", "t1", "public.t1", "MIXED", "Gone"])
    assert out.params.target == "app"
    assert [str(t) for t in out.params.tables] == ["public.Mixed", "public.t1"]
    assert out.facts == {"missing": ["public.Gone"]}
    exact = resolved(s, "app", ["DUP", "dup", "Dup"])
    assert [str(t) for t in exact.params.tables] == ["public.DUP", "public.dup"]
    assert exact.facts == {"missing": ["public.Dup"]}
    assert resolved(s, "app", ["t1"]).facts == {}
    with pytest.raises(Refused, match=r"'other' is not configured .*\(known: app, self\)"):
        resolved(s, "other", ["t1"])


def test_case_variants_of_a_target_share_one_cooldown_and_analyze_once(
    settings_env: Any, target_db: str, r: redis.Redis
) -> None:
    """analyze_tables on "app", then on "APP", "App", "aPp" with the table spelled three
    ways: the later calls are suppressed by the one cooldown, one breaker exists, and
    PostgreSQL counts one ANALYZE of the table."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    create(target_db, "t1")
    runner = Runner(s, Recorder())
    calls = [("app", ["t1"]), ("APP", ["PUBLIC.T1"]), ("App", ["t1", "T1"]), ("aPp", ["public.t1"])]
    outcomes = [
        runner.run_action("analyze_tables", {"target": target, "tables": tables}, task_id=f"cv{n}")
        for n, (target, tables) in enumerate(calls)
    ]
    assert [o.outcome for o in outcomes] == ["succeeded"] + ["suppressed"] * 3
    assert all("cooling down" in (o.reason or "") for o in outcomes[1:])
    assert r.smembers(keys.BREAKER_INDEX) == {b"analyze_tables:app"}
    cooldowns = sorted(r.scan_iter(match=keys.cooldown("analyze_tables", "*")))
    assert cooldowns == [keys.cooldown("analyze_tables", "app/public.t1").encode()]
    rows = runner.store.query(
        "SELECT target, resource, guard FROM guard_decisions WHERE task_id LIKE 'cv%%'"
        " ORDER BY task_id"
    )
    assert [(row["target"], row["resource"]) for row in rows] == [("app", "app/public.t1")] * 4
    assert [row["guard"] for row in rows[1:]] == ["cooldown"] * 3
    wait_for(lambda: analyze_count(target_db, "t1") >= 1, 15, 0.3, "stats flush")
    assert analyze_count(target_db, "t1") == 1


def test_a_call_naming_no_existing_table_is_refused_for_free(
    settings_env: Any, target_db: str, r: redis.Redis
) -> None:
    """Three calls naming only missing tables are refused by the resolve step (audited,
    guard 'resolve'), spend no budget, touch no breaker and send one notice; a call naming
    a real table next to a missing one runs and reports the missing one."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    create(target_db, "real")
    sent = Recorder()
    runner = Runner(s, sent)
    refused = [
        runner.run_action("vacuum_analyze", {"target": "app", "tables": ["nope"]}, task_id=f"nr{n}")
        for n in range(3)
    ]
    assert [o.outcome for o in refused] == ["refused"] * 3
    assert "no such table on app: public.nope" in (refused[0].reason or "")
    assert r.zcard(keys.budget("vacuum_analyze")) == 0
    assert r.smembers(keys.BREAKER_INDEX) == set()
    rows = runner.store.query(
        "SELECT decision, guard FROM guard_decisions WHERE task_id LIKE 'nr%%'"
    )
    assert rows == [{"decision": "refused", "guard": "resolve"}] * 3
    notices = [k["kind"] for task, k, _ in sent.sent if task.endswith(".notify")]
    assert notices == ["action_refused"]
    ok = runner.run_action(
        "vacuum_analyze", {"target": "APP", "tables": ["REAL", "nope"]}, task_id="nr-ok"
    )
    assert ok.outcome == "succeeded"
    assert ok.result is not None and ok.result["detail"]["missing"] == ["public.nope"]
    assert r.zcard(keys.budget("vacuum_analyze")) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"tables": []},
        {"tables": "t"},
        {"tables": [{"name": ""}]},
        {"tables": ["t"], "x": 1},
        {"tables": ["t"], "target": "../etc"},
    ],
)
def test_invalid_params_are_rejected(kwargs: dict[str, Any]) -> None:
    """Missing, empty, wrong-typed and unknown kwargs fail validation."""
    with pytest.raises(ValidationError):
        VacuumParams.model_validate(kwargs)


def test_string_table_refs_split_at_first_dot() -> None:
    """'schema.table' strings become a schema and a name; bare names are in public."""
    p = VacuumParams(tables=["s.t", "plain"])
    assert [(t.schema_, t.name) for t in p.tables] == [("s", "t"), ("public", "plain")]


def test_vacuum_plan_lists_the_existing_tables_and_changes_nothing(
    settings_env: Any, target_db: str
) -> None:
    """The plan names each existing table once with its size, skips a missing one, and
    vacuums or analyzes nothing."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    bloat(target_db, "pa")
    bloat(target_db, "pb")
    params = VacuumParams(target="app", tables=["pa", "pb", "gone"])
    before = (last_vacuum(target_db), analyze_count(target_db, "pa"))
    plan = plan_vacuum(CheckContext(s, get_logger()), params)
    assert plan.keys() == {"table:public.pa", "table:public.pb"}
    assert all(i.detail["size_bytes"] > 0 and "dead_rows" in i.detail for i in plan.items)
    assert "1 missing" in plan.summary
    analyze = plan_analyze(CheckContext(s, get_logger()), AnalyzeParams(**params.model_dump()))
    assert analyze.keys() == plan.keys()
    assert (last_vacuum(target_db), analyze_count(target_db, "pa")) == before


def test_an_approval_vacuums_only_approved_tables_still_there(
    settings_env: Any, target_db: str
) -> None:
    """Approved pa and pc, pc dropped since, pb never approved: only pa is vacuumed."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    create(target_db, "pa", "pb", "pc")
    params = VacuumParams(target="app", tables=["pa", "pb", "pc"])
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("DROP TABLE public.pc")
    ctx = ActionContext(s, get_logger(), approved=frozenset({"table:public.pa", "table:public.pc"}))
    result = vacuum_analyze(ctx, params)
    assert result.detail["vacuumed"] == ["public.pa"]
    assert result.detail["missing"] == ["public.pc"]
    assert result.detail["not_approved"] == ["public.pb"]
    assert {k for k, v in last_vacuum(target_db).items() if v is not None} == {"pa"}
    ctx = ActionContext(s, get_logger(), approved=frozenset({"table:public.pb"}))
    assert analyze_tables(ctx, AnalyzeParams(**params.model_dump())).detail["analyzed"] == [
        "public.pb"
    ]
    # pa: once, by its VACUUM (ANALYZE); pb: once, by the approved ANALYZE alone
    assert (analyze_count(target_db, "pa"), analyze_count(target_db, "pb")) == (1, 1)
