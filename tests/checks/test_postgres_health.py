"""PostgreSQL health checks against a real PostgreSQL: scratch databases, real sessions."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from remediation import pg_activity
from remediation.audit.store import AuditStore
from remediation.checks import postgres_health as health
from remediation.checks import postgres_stats as stats
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import get_logger
from tests.support.base import free_port, wait_for
from tests.support.pg_cluster import pg_bindir
from tests.support.postgres import FAST, running, session, wait_for_sessions


def run(fn: Any, settings: Any, store: Any = None, **params: Any) -> list[Finding]:
    """Call a check function directly, validating params with its own model."""
    model = typing.get_type_hints(fn)["params"]
    result: list[Finding] = fn(CheckContext(settings, get_logger(), store), model(**params))
    return result


def kinds(findings: list[Finding]) -> dict[str, Finding]:
    return {f.kind: f for f in findings}


# --- postgres_connections -----------------------------------------------------------------


def test_connection_slots_are_banded(settings_env: Any, target_db: str) -> None:
    """Client sessions against usable slots trip the warning, high and critical ratios."""
    env = {"REMEDIATION_POSTGRES_TARGETS__APP": target_db}
    with contextlib.ExitStack() as stack:
        for n in range(3):
            stack.enter_context(session(target_db, app=f"filler-{n}", idle_in_transaction=False))
        bands = {
            ("0.01", "0.02", "0.03"): "critical",
            ("0.01", "0.02", "1"): "high",
            ("0.01", "1", "1"): "warning",
        }
        for (warning, high, critical), expected in bands.items():
            s = settings_env(
                **env,
                REMEDIATION_POSTGRES__CONNECTIONS_WARNING_RATIO=warning,
                REMEDIATION_POSTGRES__CONNECTIONS_HIGH_RATIO=high,
                REMEDIATION_POSTGRES__CONNECTIONS_CRITICAL_RATIO=critical,
            )
            f = kinds(run(health.postgres_connections, s, target="app"))[
                "postgres_connections_high"
            ]
            assert (f.severity.value, f.subject) == (expected, "")
            ev = f.evidence
            assert ev["usable"] == ev["max_connections"] - ev["superuser_reserved_connections"]
            assert ev["in_use"] >= 4 and f.observed == round(ev["in_use"] / ev["usable"], 4)
        s = settings_env(**env, REMEDIATION_POSTGRES__CONNECTIONS_WARNING_RATIO="1")
        assert "postgres_connections_high" not in kinds(
            run(health.postgres_connections, s, target="app")
        )


def test_pool_exhaustion_counts_busy_sessions_of_the_pool(
    settings_env: Any, target_db: str
) -> None:
    """Sessions of the pool's application that are not idle fill the pool; idle ones do not."""
    app = f"shop-pool-{uuid.uuid4().hex[:6]}"
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_POSTGRES__POOL_SIZE="2",
        REMEDIATION_POSTGRES__POOL_APPLICATION_NAME=app,
        REMEDIATION_POSTGRES__CONNECTIONS_WARNING_RATIO="0.5",
        REMEDIATION_POSTGRES__CONNECTIONS_HIGH_RATIO="0.9",
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(session(target_db, app=app, idle_in_transaction=False))
        stack.enter_context(session(target_db, app=app))
        f = kinds(run(health.postgres_connections, s, target="app"))["postgres_pool_exhausted"]
        assert (f.severity.value, f.subject, f.observed, f.evidence["open"]) == (
            "warning",
            app,
            0.5,
            2,
        )
        stack.enter_context(session(target_db, app=app))
        f = kinds(run(health.postgres_connections, s, target="app"))["postgres_pool_exhausted"]
        assert (f.severity.value, f.observed, f.evidence["busy"]) == ("high", 1.0, 2)


def test_slow_round_trip_is_reported(settings_env: Any, target_db: str) -> None:
    """A SELECT 1 round trip past the latency threshold is postgres_latency_high."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_POSTGRES__LATENCY_WARNING_MS="0.0001",
    )
    f = kinds(run(health.postgres_connections, s, target="app"))["postgres_latency_high"]
    assert f.severity.value == "warning" and f.observed == f.evidence["round_trip_ms"] > 0


@pytest.mark.parametrize("password", ["Sup3r-S3cret-pw", "p%40ss%2Fw0rd-xyz"])
def test_unreachable_target_is_a_critical_finding_without_password(
    settings_env: Any, password: str
) -> None:
    """A refused connection is one critical postgres_unreachable finding that hides the password."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__DOWN=f"postgresql://app:{password}@127.0.0.1:1/appdb",
        REMEDIATION_POSTGRES__CONNECT_TIMEOUT_SECONDS="2",
    )
    (f,) = run(health.postgres_connections, s, target="down")
    assert (f.kind, f.severity.value, f.evidence["port"]) == (
        "postgres_unreachable",
        "critical",
        "1",
    )
    assert "refused" in f.evidence["error"].lower() or "failed" in f.evidence["error"].lower()
    dumped = f.model_dump_json()
    for secret in (
        password,
        psycopg.conninfo.conninfo_to_dict(f"postgresql://a:{password}@h/d")["password"],
    ):
        assert str(secret) not in dumped


# --- postgres_sessions --------------------------------------------------------------------


def test_sessions_idle_in_transaction_and_long_queries(settings_env: Any, target_db: str) -> None:
    """Old idle transactions and long queries are reported, one finding per kind, masked."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db, **FAST)
    secret_query = "SELECT 'hunter2-sesame' AS pw /* " + "x" * 500 + " */"
    with contextlib.ExitStack() as stack:
        own = stack.enter_context(session(target_db, app="remediation-audit"))  # idle longest
        idle = stack.enter_context(session(target_db, app="shop"))
        idle.execute(secret_query)
        long = stack.enter_context(running(target_db, "report"))
        idle_pid, own_pid = idle.info.backend_pid, own.info.backend_pid
        wait_for_sessions(target_db, pg_activity.IDLE, {idle_pid})
        wait_for_sessions(target_db, pg_activity.ACTIVE, {long["pid"]})
        found = kinds(run(health.postgres_sessions, s, target="app"))
    assert set(found) == {"postgres_idle_in_transaction", "postgres_long_query"}
    f = found["postgres_idle_in_transaction"]
    assert (f.severity.value, f.threshold, f.subject) == ("warning", 1, "")
    (entry,) = f.evidence["sessions"]  # never the remediation-* session
    assert (entry["pid"], entry["usename"], entry["application_name"]) == (
        idle_pid,
        "postgres",
        "shop",
    )
    assert entry["age_s"] >= 1 and own_pid != entry["pid"]
    assert "hunter2" not in f.model_dump_json() and len(entry["query"]) <= pg_activity.QUERY_CHARS
    assert entry["query"].startswith("SELECT '***' AS pw")
    g = found["postgres_long_query"]
    assert g.severity.value == "high"
    assert [(e["pid"], e["query"]) for e in g.evidence["sessions"]] == [
        (long["pid"], "SELECT pg_sleep(30)")
    ]


def test_young_sessions_are_not_reported(settings_env: Any, target_db: str) -> None:
    """Sessions under the bounds (defaults: 600 s idle, 300 s active) give no finding."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    with session(target_db, app="shop"):
        assert run(health.postgres_sessions, s, target="app") == []


def test_query_text_is_masked_redacted_and_cut() -> None:
    """Literals and dollar quotes are masked, URL passwords redacted, text cut to 200 characters."""
    text = (
        "ALTER ROLE x PASSWORD 'hunter2'; DO $f$ secret $f$; -- postgresql://u:pw1@h/db\n"
        + "y" * 400
    )
    out = pg_activity.safe_query(text)
    assert out.startswith("ALTER ROLE x PASSWORD '***'; DO $$***$$; -- postgresql://u:***@h/db y")
    assert len(out) == pg_activity.QUERY_CHARS and out.endswith("…")
    assert pg_activity.safe_query("SELECT 'cut off secr") == "SELECT '***'"
    assert pg_activity.safe_query(None) == ""


# --- postgres_unused_indexes --------------------------------------------------------------


def index_scans(dsn: str, index: str) -> int:
    """idx_scan in a fresh transaction (statistics are cached per transaction)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (index,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_unused_indexes_are_listed_with_hostile_names(settings_env: Any, target_db: str) -> None:
    """Never-scanned plain indexes are listed; used, unique and primary-key indexes are not."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    hostile = 'idx"; DROP TABLE orders; --'
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, sku text UNIQUE, note text, shop int)"
        )
        conn.execute(
            "INSERT INTO orders SELECT g, 'sku' || g, 'n', g % 7 FROM generate_series(1, 2000) g"
        )
        conn.execute(sql.SQL("CREATE INDEX {} ON orders (note)").format(sql.Identifier(hostile)))
        conn.execute("CREATE INDEX orders_shop ON orders (shop)")
        conn.execute("SET enable_seqscan = off")
        conn.execute("SELECT count(*) FROM orders WHERE shop = 3").fetchone()
    wait_for(lambda: index_scans(target_db, "orders_shop") > 0, 15, 0.2, "idx_scan of orders_shop")
    (f,) = run(stats.postgres_unused_indexes, s, target="app")
    assert (f.kind, f.severity.value, f.subject, f.observed) == (
        "postgres_indexes_unused",
        "info",
        "",
        1,
    )
    (index,) = f.evidence["indexes"]
    assert (index["schema"], index["table"], index["index"]) == ("public", "orders", hostile)
    assert index["bytes"] > 0 and f.evidence["total_bytes"] == index["bytes"]
    with psycopg.connect(target_db) as conn:  # reported, never dropped
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'orders'"
        ).fetchone() == (4,)
    assert run(stats.postgres_unused_indexes, s, target="app", min_size_bytes=10**9) == []


# --- postgres_database_size ---------------------------------------------------------------


def test_database_growth_across_runs(settings_env: Any, target_db: str) -> None:
    """Each run records the size; growth past the percentage since the last run is a warning."""
    target = f"size_{uuid.uuid4().hex[:8]}"
    s = settings_env(
        **{f"REMEDIATION_POSTGRES_TARGETS__{target.upper()}": target_db},
        REMEDIATION_POSTGRES__SIZE_GROWTH_WARNING_PERCENT="10",
    )
    store = AuditStore(s.audit_dsn.get_secret_value())
    assert run(stats.postgres_database_size, s, store, target=target) == []  # first run records
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 30) AS pad FROM generate_series(1, 5000) g"
        )
    (f,) = run(stats.postgres_database_size, s, store, target=target)
    assert (f.kind, f.severity.value, f.threshold) == ("postgres_database_growth", "warning", 10)
    assert f.subject == psycopg.conninfo.conninfo_to_dict(target_db)["dbname"]
    assert f.observed >= 10 and f.evidence["bytes"] > f.evidence["previous_bytes"]
    assert run(stats.postgres_database_size, s, store, target=target) == []  # no growth since
    assert run(stats.postgres_database_size, s, None, target=target) == []  # no store: no record
    recorded = store.query(
        "SELECT value FROM observations WHERE target = %s ORDER BY id", (target,)
    )
    assert len(recorded) == 3 and recorded[1]["value"] == f.evidence["bytes"]


# --- postgres_slow_queries ----------------------------------------------------------------


def test_slow_queries_unavailable_without_extension(settings_env: Any, target_db: str) -> None:
    """Without pg_stat_statements there is one info finding saying how to enable it."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    (f,) = run(stats.postgres_slow_queries, s, target="app")
    assert (f.kind, f.severity.value) == ("postgres_slow_queries_unavailable", "info")
    assert "not installed" in f.summary
    assert (
        "shared_preload_libraries" in f.summary
        and "CREATE EXTENSION pg_stat_statements" in f.summary
    )


def test_slow_queries_unavailable_when_not_preloaded(settings_env: Any, target_db: str) -> None:
    """The extension created but not preloaded is the same info finding, naming the preload."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    with psycopg.connect(target_db, autocommit=True) as conn:
        preloaded = "pg_stat_statements" in str(
            conn.execute("SHOW shared_preload_libraries").fetchone()
        )
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'"
        ).fetchone()
        if preloaded or available is None:
            pytest.skip("needs pg_stat_statements available but not preloaded on this server")
        conn.execute("CREATE EXTENSION pg_stat_statements")
    (f,) = run(stats.postgres_slow_queries, s, target="app")
    assert (f.kind, f.severity.value) == ("postgres_slow_queries_unavailable", "info")
    assert "not loaded" in f.summary and "shared_preload_libraries" in f.evidence["enable"]


@pytest.fixture(scope="module")
def pgss_server() -> Iterator[str]:
    """A private cluster with pg_stat_statements preloaded (initdb + start: under a second)."""
    bindir = pg_bindir()
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if bindir is None or (as_owner and shutil.which("runuser") is None):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    base = Path(tempfile.mkdtemp(prefix="rem-pgss-"))
    if as_owner:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    opts = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
        " -c shared_preload_libraries=pg_stat_statements -c fsync=off"
    )
    try:
        initdb = [*as_owner, str(bindir / "initdb"), "-D", str(data)]
        initdb += "-U postgres --auth=trust --no-locale -E UTF8 -N".split()
        subprocess.run(initdb, check=True, capture_output=True, timeout=60)
        pg_ctl = [*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log")]
        subprocess.run(
            [*pg_ctl, "-w", "-t", "30", "-o", opts, "start"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


def test_slow_queries_from_pg_stat_statements(settings_env: Any, pgss_server: str) -> None:
    """Statements whose mean passes the bands are listed slowest first; fast ones are not."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__PGSS=pgss_server,
        REMEDIATION_POSTGRES__SLOW_QUERY_WARNING_MS="20",
        REMEDIATION_POSTGRES__SLOW_QUERY_HIGH_MS="50",
        REMEDIATION_POSTGRES__SLOW_QUERY_CRITICAL_MS="10000",
    )
    with psycopg.connect(pgss_server, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
        for _ in range(3):
            conn.execute("SELECT pg_sleep(0.06), 'hunter2-sesame'")
            conn.execute("SELECT pg_sleep(0.03)")
            conn.execute("SELECT 1")
    (f,) = run(stats.postgres_slow_queries, s, target="pgss", min_calls=3)
    assert (f.kind, f.severity.value, f.threshold, f.subject) == (
        "postgres_slow_queries_found",
        "high",
        50,
        "postgres",
    )
    statements = f.evidence["statements"]
    assert [(st["calls"], st["severity"]) for st in statements] == [(3, "high"), (3, "warning")]
    assert statements[0]["query"] == "SELECT pg_sleep($1), $2" and statements[0]["mean_ms"] >= 50
    assert "hunter2" not in f.model_dump_json()
    assert run(stats.postgres_slow_queries, s, target="pgss", min_calls=4) == []
