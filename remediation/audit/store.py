"""Write and read audit rows. Every value written is redacted first.

One connection pool per process (prefork children get their own after fork). Every row gets
its id and its event time from this process, so a write can be repeated (INSERT ... ON
CONFLICT (id) DO NOTHING, updates by id): when PostgreSQL does not answer, the write goes
to the local spool (remediation.audit.spool) and is replayed later with the same id and
time, exactly once, before any newer write of this process.
"""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from remediation.audit import schema
from remediation.audit.schema import RowMissing, new_id, run_write, unreachable
from remediation.audit.spool import ReplayResult, Spool, StopReplay
from remediation.errors import AuditError
from remediation.findings import Finding
from remediation.logging import get_logger
from remediation.redact import (
    MASK,
    bounded_text,
    redact,
    redact_text,
    serialized_size,
    truncated,
)

if TYPE_CHECKING:
    from remediation.settings import Settings

_POOLS: dict[tuple[int, str], ConnectionPool] = {}
_DOWN_UNTIL: dict[tuple[int, str], float] = {}
_NEXT_REPLAY: dict[tuple[int, str], float] = {}

DOWN_SECONDS = 1.0
"""After PostgreSQL failed to answer, writes go straight to the spool for this long."""
STUCK_RETRY_SECONDS = 5.0
"""How often a replay is retried for records that failed for a reason other than the network."""
LOCK_WAIT_SECONDS = 5.0
"""How long a write waits for another process's replay round before spooling instead."""
CONNECT_TIMEOUT = 3
_APP = "remediation-audit"


def _conninfo(dsn: str) -> dict[str, Any]:
    try:
        return psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return {}


def _where(dsn: str) -> str:
    """'audit database "NAME" at host H, port P, user U' from a DSN, never its password."""
    info = _conninfo(dsn)
    host = info.get("host") or os.environ.get("PGHOST") or "the local socket"
    port = info.get("port") or os.environ.get("PGPORT") or "5432"
    name = info.get("dbname") or os.environ.get("PGDATABASE") or info.get("user") or "?"
    user = f", user {info['user']}" if info.get("user") else ""
    return redact_text(f'audit database "{name}" at host {host}, port {port}{user}')


def connection_failed(dsn: str, exc: BaseException) -> AuditError:
    """AuditError for a connection the audit database refused or did not answer: one line
    naming host, port, database and the cause. Never the password: psycopg's message is cut
    to its cause and redacted, and the DSN's own password is masked in it."""
    line = (str(exc).strip().splitlines() or [""])[0]
    cause = line.rpartition(" failed: ")[2]
    cause = " ".join(re.sub(r"^(FATAL|ERROR):", "", cause).split()) or type(exc).__name__
    cause = redact_text(cause)
    password = _conninfo(dsn).get("password")
    if password:
        cause = cause.replace(str(password), MASK)
    missing = cause.startswith("database ") and cause.endswith("does not exist")
    hint = " (create it, then run `remediation db upgrade`)" if missing else ""
    return AuditError(f"{_where(dsn)}: {cause}{hint}")


def _pool(dsn: str) -> ConnectionPool:
    key = (os.getpid(), dsn)
    if key not in _POOLS:
        # a pool waits its whole timeout for a server that refuses; one plain connect does not
        psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, application_name=_APP).close()
        _POOLS[key] = ConnectionPool(
            dsn,
            min_size=0,
            max_size=4,
            kwargs={"autocommit": True, "application_name": _APP,
                    "connect_timeout": CONNECT_TIMEOUT},
            timeout=5,  # how long a write waits for a connection before AuditError
            open=True,
        )  # fmt: skip
    return _POOLS[key]


def _discard_pool(dsn: str) -> None:
    """Forget a pool whose connections died with the server; the next write opens a new one."""
    pool = _POOLS.pop((os.getpid(), dsn), None)
    if pool is not None:  # closing waits for its workers: not on the caller's time
        threading.Thread(target=pool.close, daemon=True).start()


def close_pools() -> None:
    for key, pool in list(_POOLS.items()):
        if key[0] == os.getpid():
            pool.close()
        del _POOLS[key]


def _replay_one(conn: psycopg.Connection[Any], record: dict[str, Any]) -> None:
    try:
        run_write(conn, str(record["op"]), dict(record["args"]))
    except (psycopg.Error, OSError) as exc:
        if unreachable(exc):
            raise StopReplay from exc
        raise


def _now() -> str:
    return datetime.now(UTC).isoformat()


TEXT_MAX = 4000
"""Characters of a reason, error or summary an audit row keeps (redacted first, then cut)."""
JSON_MAX_BYTES = 65536
"""A params or result value larger than this (as JSON) is stored as size + sha256 + prefix."""


def audit_text(value: Any) -> str | None:
    return None if value is None else bounded_text(redact_text(str(value)), TEXT_MAX)


def audit_json(value: Any) -> Any:
    """value redacted, or its truncated form when it is too big to keep whole."""
    masked = redact(value)
    if serialized_size(masked) > JSON_MAX_BYTES:
        return truncated(value)
    return masked


class AuditStore:
    """The audit trail of one database, with a local spool for outages when spool_dir is set.

    Without spool_dir a write PostgreSQL does not take raises AuditError (as before)."""

    def __init__(
        self, dsn: str, spool_dir: str | os.PathLike[str] | None = None, spool_max_mb: int = 512
    ) -> None:
        self.dsn = dsn
        self.spool = Spool(spool_dir, spool_max_mb) if spool_dir is not None else None
        self.log = get_logger("remediation.audit")

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditStore:
        """The store a worker uses: REMEDIATION_AUDIT_DSN with REMEDIATION_AUDIT__SPOOL_*."""
        return cls(
            settings.audit_dsn.get_secret_value(),
            spool_dir=settings.audit.spool_dir,
            spool_max_mb=settings.audit.spool_max_mb,
        )

    @property
    def _key(self) -> tuple[int, str]:
        return (os.getpid(), self.dsn)

    def _exec(self, op: str, args: dict[str, Any]) -> None:
        """One direct write; AuditError (cause attached) when it fails."""
        try:
            with _pool(self.dsn).connection() as conn:
                for _ in range(3):
                    if run_write(conn, op, args):
                        return
                    args["id"] = new_id()  # another process took this id: never drop the row
        except RowMissing:
            raise
        except (psycopg.Error, OSError) as exc:
            if unreachable(exc):
                _discard_pool(self.dsn)
            raise AuditError(f"audit write failed: {type(exc).__name__}") from exc
        raise AuditError("audit write failed: no free id")

    def _write(self, op: str, args: dict[str, Any]) -> None:
        if self.spool is None:
            try:
                self._exec(op, args)
            except RowMissing:
                pass  # as before the spool: an update of a missing row changes nothing
            return
        if time.monotonic() >= _DOWN_UNTIL.get(self._key, 0.0) and self._drain():
            try:
                self._exec(op, args)
                return
            except RowMissing:
                if not self.spool.pending():
                    return
            except AuditError as exc:
                cause = exc.__cause__
                fk = isinstance(cause, psycopg.errors.ForeignKeyViolation) and self.spool.pending()
                if not (unreachable(cause) or fk):
                    raise
                if unreachable(cause):
                    _DOWN_UNTIL[self._key] = time.monotonic() + DOWN_SECONDS
        self.spool.append({"op": op, "args": args})
        self.log.warning("audit row spooled", op=op, spool=str(self.spool.dir))

    def _drain(self) -> bool:
        """Replay what waits before writing directly; False means: spool this write too."""
        assert self.spool is not None
        if not self.spool.pending():
            return True
        stuck_only = not self.spool.own_path().exists()
        if stuck_only and time.monotonic() < _NEXT_REPLAY.get(self._key, 0.0):
            return True
        result = self._replay(LOCK_WAIT_SECONDS)
        if result is None or result.stopped:
            return False
        if result.kept:
            _NEXT_REPLAY[self._key] = time.monotonic() + STUCK_RETRY_SECONDS
        return True

    def _replay(self, wait: float) -> ReplayResult | None:
        assert self.spool is not None
        try:
            conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name=_APP
            )
        except psycopg.Error:
            _DOWN_UNTIL[self._key] = time.monotonic() + DOWN_SECONDS
            return ReplayResult(stopped=True)
        with conn:
            result = self.spool.replay(lambda record: _replay_one(conn, record), wait=wait)
        if result is not None and (result.applied or result.kept or result.dropped):
            self.log.info("audit spool replayed", rows=result.applied, kept=result.kept,
                          torn_lines=result.dropped, stopped=result.stopped)  # fmt: skip
        if result is not None and result.stopped:
            _DOWN_UNTIL[self._key] = time.monotonic() + DOWN_SECONDS
        return result

    def replay_spool(self, wait: float = 30.0) -> int:
        """Replay the spool now (e.g. from the CLI); returns how many records were applied."""
        if self.spool is None:
            return 0
        result = self._replay(wait)
        if result is None:
            raise AuditError(f"another process kept the audit spool locked for {wait:g} s")
        if result.stopped:
            raise AuditError(
                f"{_where(self.dsn)} unreachable; {result.kept} record(s) stay spooled"
            )
        return result.applied

    def query(
        self, query: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> list[dict[str, Any]]:
        try:
            with _pool(self.dsn).connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query, params)
                return cur.fetchall()
        except psycopg.errors.UndefinedTable as exc:
            raise AuditError(
                f"{_where(self.dsn)} has no audit tables: run `remediation db upgrade`"
            ) from exc
        except psycopg.Error as exc:
            if not unreachable(exc):
                raise
            _discard_pool(self.dsn)
            raise connection_failed(self.dsn, exc) from exc

    def upgrade(self) -> list[int]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise connection_failed(self.dsn, exc) from exc
        with conn:
            return schema.upgrade(conn)

    # --- writes ---------------------------------------------------------------------------

    def start_check_run(
        self, check: str, target: str, params: dict[str, Any], purpose: str, task_id: str | None
    ) -> int:
        args: dict[str, Any] = {
            "id": new_id(),
            "task_id": task_id,
            "check": check,
            "target": target,
            "purpose": purpose,
            "params": audit_json(params),
            "at": _now(),
        }
        self._write("check_run", args)
        return int(args["id"])

    def finish_check_run(
        self, run_id: int, status: str, findings: int, duration_ms: float, error: str | None = None
    ) -> None:
        self._write("finish_check_run", {"id": run_id, "status": status, "findings": findings,
                    "error": audit_text(error), "duration_ms": duration_ms,
                    "at": _now()})  # fmt: skip

    def rejected_check(
        self, check: str, raw: dict[str, Any], error: str, task_id: str | None
    ) -> int:
        args: dict[str, Any] = {"id": new_id(), "task_id": task_id, "check": check,
                "target": redact_text(str(raw.get("target", "?")))[:64], "params": audit_json(raw),
                "error": audit_text(error), "at": _now()}  # fmt: skip
        self._write("rejected_check", args)
        return int(args["id"])

    def add_finding(self, run_id: int, f: Finding, incident_id: str | None) -> int:
        args: dict[str, Any] = {
            "id": new_id(), "run_id": run_id, "check": f.check, "target": f.target,
            "subject": f.subject, "kind": f.kind, "severity": f.severity.value,
            "observed": audit_text(f.observed), "threshold": audit_text(f.threshold),
            "summary": audit_text(f.summary), "evidence": audit_json(f.evidence),
            "fingerprint": f.fingerprint, "incident_id": incident_id, "at": _now(),
        }  # fmt: skip
        self._write("finding", args)
        return int(args["id"])

    def add_decision(
        self,
        *,
        action: str,
        target: str,
        resource: str,
        decision: str,
        guard: str = "",
        reason: str = "",
        finding_id: int | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        args: dict[str, Any] = {
            "id": new_id(), "finding_id": finding_id, "task_id": task_id, "action": action,
            "target": target, "resource": resource, "idempotency_key": idempotency_key,
            "decision": decision, "guard": guard or None, "reason": audit_text(reason),
            "at": _now(),
        }  # fmt: skip
        self._write("decision", args)
        return int(args["id"])

    def add_action_run(
        self,
        *,
        action: str,
        target: str,
        resource: str | None,
        params: dict[str, Any],
        outcome: str,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        duration_ms: float = 0.0,
        decision_id: int | None = None,
        finding_id: int | None = None,
        task_id: str | None = None,
        verification: str | None = None,
    ) -> int:
        args: dict[str, Any] = {
            "id": new_id(), "decision_id": decision_id, "finding_id": finding_id,
            "task_id": task_id, "action": action, "target": target, "resource": resource,
            "params": audit_json(params), "outcome": outcome, "error": audit_text(error),
            "result": audit_json(result) if result is not None else None,
            "duration_ms": duration_ms, "verification": verification, "at": _now(),
        }  # fmt: skip
        self._write("action_run", args)
        return int(args["id"])

    def set_verification(
        self, action_run_id: int, verification: str, check_run_id: int | None
    ) -> None:
        self._write("verification", {"id": action_run_id, "verification": verification,
                    "check_run_id": check_run_id, "at": _now()})  # fmt: skip

    def record_observation(self, check: str, target: str, metric: str, value: float) -> None:
        """A measured value kept for the next run to compare with (e.g. database size)."""
        self._write("observation", {"id": new_id(), "check": check, "target": target,
                    "metric": metric, "value": value, "at": _now()})  # fmt: skip

    def last_observation(self, check: str, target: str, metric: str) -> tuple[float, Any] | None:
        """(value, observed_at) of the newest observation, or None (also while unreachable)."""
        if self.spool is not None:
            if time.monotonic() < _DOWN_UNTIL.get(self._key, 0.0) or not self._drain():
                return None
        try:
            rows = self.query(
                "SELECT value, observed_at FROM observations WHERE check_name = %s"
                " AND target = %s AND metric = %s ORDER BY observed_at DESC, id DESC LIMIT 1",
                (check, target, metric),
            )
        except AuditError:
            _DOWN_UNTIL[self._key] = time.monotonic() + DOWN_SECONDS
            return None
        return (rows[0]["value"], rows[0]["observed_at"]) if rows else None

    # --- reads ----------------------------------------------------------------------------

    def history(
        self,
        *,
        action: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Guard decisions with the action run (if any) they led to, newest first."""
        return self.query(
            """
            SELECT d.id AS decision_id, d.decided_at, d.action, d.target, d.resource,
                   d.decision, d.guard, d.reason, a.id AS action_run_id, a.outcome,
                   a.error, a.duration_ms, a.verification, d.finding_id
            FROM guard_decisions d LEFT JOIN action_runs a ON a.decision_id = d.id
            WHERE (%(action)s::text IS NULL OR d.action = %(action)s)
              AND (%(target)s::text IS NULL OR d.target = %(target)s)
              AND (%(outcome)s::text IS NULL OR a.outcome = %(outcome)s
                   OR d.decision = %(outcome)s)
              AND (%(since)s::timestamptz IS NULL OR d.decided_at >= %(since)s)
            UNION ALL
            SELECT NULL, a.started_at, a.action, a.target, a.resource, 'rejected', 'params',
                   a.error, a.id, a.outcome, a.error, a.duration_ms, a.verification, NULL
            FROM action_runs a
            WHERE a.decision_id IS NULL
              AND (%(action)s::text IS NULL OR a.action = %(action)s)
              AND (%(target)s::text IS NULL OR a.target = %(target)s)
              AND (%(outcome)s::text IS NULL OR a.outcome = %(outcome)s)
              AND (%(since)s::timestamptz IS NULL OR a.started_at >= %(since)s)
            ORDER BY 2 DESC LIMIT %(limit)s
            """,
            {
                "action": action,
                "target": target,
                "outcome": outcome,
                "since": since,
                "limit": limit,
            },
        )
