"""terminate_idle_transactions and cancel_long_queries against real PostgreSQL sessions.

Roles with hostile names log in with trust auth; only allow-listed sessions may be ended."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql
from pydantic import ValidationError

from remediation.actions.postgres_sessions import (
    CancelLongQueriesParams,
    TerminateIdleTransactionsParams,
    cancel_long_queries,
    resolve_cancel,
    resolve_terminate,
    terminate_idle_transactions,
)
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.pg_activity import ACTIVE, IDLE
from remediation.runner import Runner
from remediation.settings import DEFAULT_REQUIRE
from tests.support.base import wait_for
from tests.support.postgres import FAST, running, session, wait_for_sessions
from tests.support.runner import Recorder

IDLE_TX = "idle in transaction"


@pytest.fixture
def roles(pg_admin: str) -> Iterator[tuple[str, str]]:
    """Two LOGIN roles with odd names; their sessions are ended and the roles dropped after."""
    tag = uuid.uuid4().hex[:6]
    names = (f"app role {tag}", f'batch"; -- {tag}')
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield names
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = ANY(%s)",
            (list(names),),
        )
        for name in names:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def terminate(settings: Any) -> ActionResult:
    ctx = ActionContext(settings, get_logger())
    return terminate_idle_transactions(ctx, TerminateIdleTransactionsParams(target="app"))


def cancel(settings: Any) -> ActionResult:
    return cancel_long_queries(
        ActionContext(settings, get_logger()), CancelLongQueriesParams(target="app")
    )


def state(dsn: str, conn: psycopg.Connection[Any]) -> str | None:
    """The session's state as the server sees it (None: gone), without touching the session."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s", (conn.pgconn.backend_pid,)
        ).fetchone()
    return str(row[0]) if row else None


def answers(conn: psycopg.Connection[Any]) -> bool:
    """True when the client can still use its session (and its transaction is still open)."""
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


def active_for(dsn: str, pid: int) -> float:
    """Seconds the session has been running its current query (0 when not active)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM now() - query_start) FROM pg_stat_activity"
            " WHERE pid = %s AND state = 'active'",
            (pid,),
        ).fetchone()
    return float(row[0]) if row else 0.0


def test_only_allow_listed_role_is_terminated(
    settings_env: Any, target_db: str, roles: Any
) -> None:
    """The allow-listed role's idle transaction is ended; the other role's and the worker's stay."""
    app_role, batch_role = roles
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        **FAST,
        REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES=json.dumps([app_role]),
    )
    with contextlib.ExitStack() as stack:
        own = stack.enter_context(session(target_db, user=app_role, app="remediation-audit"))
        allowed = stack.enter_context(session(target_db, user=app_role, app="shop"))
        other = stack.enter_context(session(target_db, user=batch_role, app="batch"))
        pids = {c.info.backend_pid for c in (allowed, other)}
        wait_for_sessions(target_db, IDLE, pids)
        result = terminate(s)
        assert (result.ok, result.changed) == (True, True)
        assert [
            (t["pid"], t["usename"], t["application_name"]) for t in result.detail["terminated"]
        ] == [(allowed.info.backend_pid, app_role, "shop")]
        assert (result.detail["skipped_not_allowed"], result.detail["skipped_over_cap"]) == (1, 0)
        assert result.detail["terminated"][0]["age_s"] >= 1
        assert [state(target_db, c) for c in (allowed, other, own)] == [None, IDLE_TX, IDLE_TX]
        again = terminate(s)  # idempotent: nothing allowed is left
        assert (again.changed, again.detail["skipped_not_allowed"]) == (False, 1)
        assert not answers(allowed)  # the client sees its connection closed
        assert answers(other) and answers(own)


def test_cap_per_run_takes_the_oldest_first(settings_env: Any, target_db: str) -> None:
    """With a cap of 2, the two oldest allow-listed sessions go; the third waits for the next run."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        **FAST,
        REMEDIATION_POSTGRES__SESSION_ALLOW_APPLICATIONS='["shop"]',
        REMEDIATION_POSTGRES__MAX_SESSIONS_PER_RUN="2",
    )
    with contextlib.ExitStack() as stack:
        conns = []
        for _ in range(3):
            conns.append(stack.enter_context(session(target_db, app="shop")))
            conns[-1].execute("SELECT pg_sleep(0.05)")  # distinct state_change times, in order
        wait_for_sessions(target_db, IDLE, {c.info.backend_pid for c in conns})
        first, second, third = (c.info.backend_pid for c in conns)
        result = terminate(s)
        assert [t["pid"] for t in result.detail["terminated"]] == [first, second]
        assert (result.detail["skipped_not_allowed"], result.detail["skipped_over_cap"]) == (0, 1)
        assert "over the cap of 2" in result.summary
        assert [state(target_db, c) for c in conns] == [None, None, IDLE_TX]
        assert [t["pid"] for t in terminate(s).detail["terminated"]] == [third]
        assert [answers(c) for c in conns] == [False, False, False]


def test_empty_allow_lists_refuse_before_any_guard(
    settings_env: Any, target_db: str, r: redis.Redis
) -> None:
    """With no role or application allow-listed, calls (any spelling of the target) are
    refused by the resolve step with the reason, quietly: no session is touched, no budget
    or breaker is used, no notice is sent."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db, **FAST)
    sent = Recorder()
    runner = Runner(s, sent)
    with session(target_db, app="shop") as conn:
        wait_for_sessions(target_db, IDLE, {conn.info.backend_pid})
        outcomes = [
            runner.run_action("terminate_idle_transactions", {"target": t}, task_id=f"ea-{t}")
            for t in ("app", "APP")
        ]
        assert [o.outcome for o in outcomes] == ["refused", "refused"]
        assert "REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES" in (outcomes[0].reason or "")
        assert state(target_db, conn) == IDLE_TX and answers(conn)
    rows = runner.store.query(
        "SELECT decision, guard FROM guard_decisions WHERE task_id LIKE 'ea-%%'"
    )
    assert rows == [{"decision": "refused", "guard": "resolve"}] * 2
    assert r.zcard(keys.budget("terminate_idle_transactions")) == 0
    assert r.smembers(keys.BREAKER_INDEX) == set()
    assert sent.sent == []
    with pytest.raises(Refused, match="no session may be terminated") as direct:
        terminate(s)  # called directly, the action refuses in the same words
    assert not direct.value.notice


def test_cancel_long_queries_is_opt_in(settings_env: Any, target_db: str, r: redis.Redis) -> None:
    """Off by default a call is refused (quietly, before any guard) and cancels nothing;
    opted in it resolves the target as configured and cancels only the allow-listed query."""
    env = {
        "REMEDIATION_POSTGRES_TARGETS__APP": target_db,
        **FAST,
        "REMEDIATION_POSTGRES__SESSION_ALLOW_APPLICATIONS": '["batch-job"]',
    }
    s = settings_env(**env)
    sent = Recorder()
    with running(target_db, "batch-job") as job, running(target_db, "report") as report:
        wait_for_sessions(target_db, ACTIVE, {job["pid"], report["pid"]})
        off = Runner(s, sent).run_action("cancel_long_queries", {"target": "app"})
        assert off.outcome == "refused"
        assert "REMEDIATION_POSTGRES__CANCEL_LONG_QUERIES=true" in (off.reason or "")
        assert r.zcard(keys.budget("cancel_long_queries")) == 0 and sent.sent == []
        with pytest.raises(Refused, match="opt-in"):
            cancel(s)
        assert job["thread"].is_alive() and report["thread"].is_alive()
        s = settings_env(**env, REMEDIATION_POSTGRES__CANCEL_LONG_QUERIES="true")
        resolved = resolve_cancel(
            CheckContext(s, get_logger()), CancelLongQueriesParams(target="App")
        )
        assert resolved.params.target == "app"
        result = cancel_long_queries(ActionContext(s, get_logger()), resolved.params)
        assert [(c["pid"], c["application_name"]) for c in result.detail["cancelled"]] == [
            (job["pid"], "batch-job")
        ]
        assert result.detail["skipped_not_allowed"] == 1
        job["thread"].join(5)
        assert isinstance(job["error"], psycopg.errors.QueryCanceled)
        assert report["thread"].is_alive() and report["error"] is None


def test_resolve_refuses_unknown_targets_and_empty_allow_lists_when_opted_in(
    settings_env: Any, target_db: str
) -> None:
    """A target that is not configured is refused (with a notice); cancelling switched on
    with both allow-lists empty is refused quietly, naming the allow-list variables."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES='["x"]',
    )
    ctx = CheckContext(s, get_logger())
    with pytest.raises(Refused, match="'nope' is not configured") as unknown:
        resolve_terminate(ctx, TerminateIdleTransactionsParams(target="nope"))
    assert unknown.value.notice
    assert (
        resolve_terminate(ctx, TerminateIdleTransactionsParams(target="APP")).params.target == "app"
    )
    s = settings_env(
        REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES="[]",
        REMEDIATION_POSTGRES__CANCEL_LONG_QUERIES="true",
    )
    with pytest.raises(Refused, match=r"no session may be cancelled.*ALLOW_ROLES") as empty:
        resolve_cancel(CheckContext(s, get_logger()), CancelLongQueriesParams(target="app"))
    assert not empty.value.notice


def test_worker_sessions_are_never_cancelled(settings_env: Any, target_db: str) -> None:
    """A long query tagged remediation* is not a candidate even when its application is allowed."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        **FAST,
        REMEDIATION_POSTGRES__SESSION_ALLOW_APPLICATIONS='["remediation"]',
        REMEDIATION_POSTGRES__CANCEL_LONG_QUERIES="true",
    )
    with running(target_db, "remediation") as own:
        wait_for(lambda: active_for(target_db, own["pid"]) > 1.2, 10, 0.1, "own query > 1.2 s")
        result = cancel(s)
        assert (result.changed, result.detail["skipped_not_allowed"]) == (False, 0)
        assert own["thread"].is_alive()


@pytest.mark.parametrize("kwargs", [{"x": 1}, {"target": "../etc"}, {"target": ""}])
def test_invalid_params_are_rejected(kwargs: dict[str, Any]) -> None:
    """Unknown kwargs and malformed target names fail validation before anything runs."""
    for model in (TerminateIdleTransactionsParams, CancelLongQueriesParams):
        with pytest.raises(ValidationError):
            model.model_validate(kwargs)


def test_by_default_ending_sessions_waits_for_approval_and_dry_run_shows_the_same_plan(
    settings_env: Any, target_db: str, r: redis.Redis
) -> None:
    """With the default REMEDIATION_APPROVALS__REQUIRE a call waits for approval with its
    plan (nothing ended, nothing guarded); in dry-run the audited plan names the same
    sessions."""
    env = {
        "REMEDIATION_POSTGRES_TARGETS__APP": target_db,
        "REMEDIATION_POSTGRES__SESSION_ALLOW_APPLICATIONS": '["shop"]',
        "REMEDIATION_APPROVALS__REQUIRE": json.dumps(DEFAULT_REQUIRE),
        **FAST,
    }
    s = settings_env(**env)
    with session(target_db, app="shop") as one, session(target_db, app="shop") as two:
        pids = {one.info.backend_pid, two.info.backend_pid}
        wait_for_sessions(target_db, IDLE, pids)
        asked = Runner(s, Recorder()).run_action("terminate_idle_transactions", {"target": "app"})
        assert asked.outcome == "pending_approval"
        assert asked.result is not None
        plan = asked.result["plan"]
        assert {i["detail"]["pid"] for i in plan["items"]} == pids
        assert answers(one) and answers(two)
        assert r.zcard(keys.budget("terminate_idle_transactions")) == 0  # nothing guarded
        dry = settings_env(**env, REMEDIATION_GUARDS__DRY_RUN="true")
        wait_for_sessions(target_db, IDLE, pids)  # answers() ran a query in each
        shown = Runner(dry, Recorder()).run_action("terminate_idle_transactions", {"target": "app"})
        assert shown.outcome == "dry_run" and shown.result is not None, shown
        assert {i["key"] for i in shown.result["plan"]["items"]} == {
            i["key"] for i in plan["items"]
        }
        assert answers(one) and answers(two)
