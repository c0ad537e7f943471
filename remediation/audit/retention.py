"""Audit retention (issue 15): delete audit rows older than REMEDIATION_RETENTION__*, in
bounded batches, children before parents, each batch its own short transaction.

What goes (cutoffs fixed once, at the start of a prune):

* action runs started before the audit cutoff;
* guard decisions decided before it, once every action run pointing at them goes too;
* findings seen before it and before the trigger reach (TRIGGER_REACH: an action queued when
  the finding was seen may be delivered while its signed trigger header is accepted, and then
  audits its decision and run against the finding), once every decision and action run
  pointing at them goes too;
* check runs started before the check-run cutoff (the audit cutoff for the prune's own
  'maintenance' rows) that no remaining finding or action run points at: a check run that
  found nothing goes after REMEDIATION_RETENTION__CHECK_RUNS_DAYS, one with findings when its
  findings go;
* observations observed before the observations cutoff.

Never deleted: a finding of an open incident (the incident ids under `rem:incident:*` in the
state Redis) or one a pending, approved or running approval refers to (its trigger's finding
and incident), nor any row hanging off one (decisions, action runs, their check runs); and
each check's newest successful run (the dead-man's switch seeds from it); and nothing at
all while this host's audit spool still holds records (they may point at rows the
prune would take). Other hosts' spools are not visible from here: a record they replay that
points at a row pruned meanwhile fails its foreign key; with a retention of days and spools
drained within minutes of PostgreSQL answering again, that needs an outage longer than the
retention.

A row written while a batch runs that names one of the batch's rows (e.g. another host
replaying its spool) fails that batch's foreign key check: the batch rolls back and runs again,
and its predicate then sees the row and keeps what it names.

Every predicate is one row-level SQL expression (the nested NOT EXISTS say "every child goes
too"), so a dry run counts exactly what an apply deletes. A prune that deletes is itself
audited: one check_runs row, check_name 'audit_prune', purpose 'maintenance', with the
cutoffs and the counts per table in params.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from remediation.audit.connection import connection_failed
from remediation.context import HEADER_MAX_AGE_SECONDS

if TYPE_CHECKING:
    import redis

    from remediation.audit.store import AuditStore
    from remediation.settings.retention import RetentionSettings

TABLES = ("action_runs", "guard_decisions", "findings", "check_runs", "observations")
"""In the order a prune deletes them: children before parents."""
CHECK_NAME = "audit_prune"
PURPOSE = "maintenance"
_LOCK_ID = 727_002
"""Session advisory lock: one prune at a time per audit database."""
BATCH_RETRIES = 5
"""Times one batch is run again after a row written meanwhile made it fail its foreign key."""
TRIGGER_REACH = timedelta(seconds=HEADER_MAX_AGE_SECONDS, days=1)
"""How old a finding an action being delivered now may name: a worker accepts a trigger
header for HEADER_MAX_AGE_SECONDS (7 days) after the finding's check signed it, plus a day
for clocks between hosts and the action's run and verification. A finding younger than this
stays whatever REMEDIATION_RETENTION__AUDIT_DAYS says (findings only: nothing else is named
by a message that may still wait in the broker)."""

# A finding that must stay: of an open incident, or referred to by a live approval.
_PROTECTED = "({f}.id = ANY(%(findings)s) OR coalesce({f}.incident_id = ANY(%(incidents)s), false))"


def _held(alias: str, column: str) -> str:
    """The row's reference (column) points at a protected finding."""
    return (
        f"EXISTS (SELECT 1 FROM findings pf WHERE pf.id = {alias}.{column}"  # noqa: S608
        f" AND {_PROTECTED.format(f='pf')})"
    )


_ACTION = (
    # constant SQL fragments joined with constant fragments: no input reaches them (S608)
    "({a}.started_at < %(audit_cut)s"  # noqa: S608
    " AND NOT EXISTS (SELECT 1 FROM findings pf WHERE pf.id = {a}.finding_id"
    f" AND {_PROTECTED.format(f='pf')})"
    " AND NOT EXISTS (SELECT 1 FROM guard_decisions pd JOIN findings pf ON pf.id = pd.finding_id"
    f" WHERE pd.id = {{a}}.decision_id AND {_PROTECTED.format(f='pf')}))"
)


def _action(alias: str) -> str:
    return _ACTION.format(a=alias)


def _all_go(table: str, column: str, parent: str, child: str, goes: Callable[[str], str]) -> str:
    """Every row of `table` pointing at the parent (by `column`) goes too."""
    return (
        f" AND NOT EXISTS (SELECT 1 FROM {table} {child}"  # noqa: S608
        f" WHERE {child}.{column} = {parent}.id AND NOT {goes(child)})"
    )


def _decision(alias: str) -> str:
    return (
        f"({alias}.decided_at < %(audit_cut)s AND NOT {_held(alias, 'finding_id')}"
        + _all_go("action_runs", "decision_id", alias, "ca", _action)
        + ")"
    )


def _finding(alias: str) -> str:
    return (
        f"({alias}.seen_at < %(finding_cut)s AND NOT {_PROTECTED.format(f=alias)}"
        + _all_go("guard_decisions", "finding_id", alias, "cd", _decision)
        + _all_go("action_runs", "finding_id", alias, "ca2", _action)
        + ")"
    )


def _check_run(alias: str) -> str:
    return (
        f"({alias}.started_at < CASE WHEN {alias}.purpose = '{PURPOSE}' THEN %(audit_cut)s"
        f" ELSE %(check_cut)s END AND {alias}.id <> ALL(%(last_ok)s)"
        + _all_go("findings", "check_run_id", alias, "cf", _finding)
        + _all_go("action_runs", "verify_check_run_id", alias, "ca3", _action)
        + ")"
    )


WHAT_GOES = {
    "action_runs": _action("t"),
    "guard_decisions": _decision("t"),
    "findings": _finding("t"),
    "check_runs": _check_run("t"),
    "observations": "(t.observed_at < %(obs_cut)s)",
}
"""Per table, the predicate (on alias t) of the rows a prune deletes."""


@dataclass(frozen=True)
class Cutoffs:
    audit: datetime
    findings: datetime  # the audit cutoff, or earlier: no finding within the trigger reach goes
    check_runs: datetime
    observations: datetime

    @classmethod
    def of(cls, settings: RetentionSettings, now: datetime) -> Cutoffs:
        audit = now - timedelta(days=settings.audit_days)
        return cls(
            audit=audit,
            findings=min(audit, now - TRIGGER_REACH),
            check_runs=now - timedelta(days=settings.check_runs_days),
            observations=now - timedelta(days=settings.observations_days),
        )


@dataclass
class Kept:
    """What must stay whatever its age: open incidents and live approvals' findings."""

    incidents: list[str] = field(default_factory=list)
    findings: list[int] = field(default_factory=list)
    last_ok: list[int] = field(default_factory=list)  # the newest ok run of each check


_LAST_OK = (
    "SELECT c.id FROM check_runs c JOIN (SELECT check_name, max(finished_at) AS at"
    " FROM check_runs WHERE status = 'ok' AND purpose <> 'maintenance' GROUP BY check_name) n"
    " ON c.check_name = n.check_name AND c.finished_at = n.at"
    " WHERE c.status = 'ok' AND c.purpose <> 'maintenance'"
)
"""Each check's newest successful run: the dead-man's switch (metrics.py) seeds its
last-success gauge from it after a restart, so a check failing for longer than the retention
keeps its old time rather than losing the series."""


@dataclass
class PruneResult:
    applied: bool
    counts: dict[str, int]
    cutoffs: dict[str, str]
    kept_incidents: int = 0
    kept_findings: int = 0
    batches: int = 0
    largest_batch: int = 0
    seconds: float = 0.0
    skipped: str | None = None  # why nothing was deleted (spool not empty, another prune)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kept(state: redis.Redis) -> Kept:
    """Open incident ids (values of `rem:incident:*`) and the findings (and incidents) of
    pending, approved and running approvals, read from the state Redis."""
    from remediation.approvals import state as approvals
    from remediation.guards import keys

    out = Kept()
    for key in state.scan_iter(match=keys.incident("*"), count=1000):
        value = state.get(key)
        if value:
            out.incidents.append(value.decode() if isinstance(value, bytes) else str(value))
    live = {approvals.PENDING, approvals.APPROVED, approvals.RUNNING}
    pending = approvals.pending(state, limit=1_000_000)
    for each in [*pending, *approvals.recent(state, limit=approvals.KEPT)]:
        if each.state not in live:
            continue
        if isinstance(each.finding_id, int):
            out.findings.append(each.finding_id)
        if each.incident:
            out.incidents.append(str(each.incident))
    out.incidents = sorted(set(out.incidents))
    out.findings = sorted(set(out.findings))
    return out


def _params(cut: Cutoffs, keep: Kept) -> dict[str, Any]:
    return {
        "audit_cut": cut.audit,
        "finding_cut": cut.findings,
        "check_cut": cut.check_runs,
        "obs_cut": cut.observations,
        "incidents": keep.incidents,
        "findings": keep.findings,
        "last_ok": keep.last_ok,
    }


def count(conn: psycopg.Connection[Any], cut: Cutoffs, keep: Kept) -> dict[str, int]:
    """Rows per table a prune with these cutoffs would delete (read-only)."""
    params = _params(cut, keep)
    out: dict[str, int] = {}
    for table in TABLES:
        query = f"SELECT count(*) FROM {table} t WHERE {WHAT_GOES[table]}"  # noqa: S608
        row = conn.execute(query, params).fetchone()
        out[table] = int(row[0]) if row else 0
    return out


def delete_batches(
    conn: psycopg.Connection[Any], table: str, cut: Cutoffs, keep: Kept, batch: int
) -> list[int]:
    """Delete what goes from one table, at most `batch` rows a statement, each statement its
    own transaction (autocommit), walking the ids upwards; returns the size of each batch.
    A batch that fails its foreign keys (a row naming one of its rows was written meanwhile)
    runs again, up to BATCH_RETRIES times in a row."""
    query = (
        f"DELETE FROM {table} WHERE id IN (SELECT t.id FROM {table} t"  # noqa: S608
        f" WHERE t.id > %(after)s AND {WHAT_GOES[table]} ORDER BY t.id LIMIT %(batch)s)"
        " RETURNING id"
    )
    sizes: list[int] = []
    after, retries = -(2**63), 0
    while True:
        params = {**_params(cut, keep), "after": after, "batch": batch}
        try:
            ids = [row[0] for row in conn.execute(query, params)]
        except psycopg.errors.ForeignKeyViolation:
            # A row naming one of the batch's rows was committed after the statement's
            # snapshot (it held that row, so the DELETE waited for it): the batch rolled
            # back; run it again, its predicate now sees that row and keeps its parent.
            retries += 1
            if retries > BATCH_RETRIES:
                raise
            continue
        retries = 0
        if ids:
            sizes.append(len(ids))
            after = max(ids)
        if len(ids) < batch:
            return sizes


def prune(
    store: AuditStore,
    settings: RetentionSettings,
    state: redis.Redis,
    apply: bool = False,
    now: datetime | None = None,
) -> PruneResult:
    """Count (apply=False) or delete (apply=True) what the retention settings let go."""
    started = time.monotonic()
    cut = Cutoffs.of(settings, now or datetime.now(UTC))
    cutoffs = {k: v.isoformat() for k, v in asdict(cut).items()}
    keep = kept(state)
    result = PruneResult(apply, dict.fromkeys(TABLES, 0), cutoffs)
    result.kept_incidents, result.kept_findings = len(keep.incidents), len(keep.findings)
    if store.spool is not None and store.spool.pending():
        result.skipped = f"this host's audit spool ({store.spool.dir}) still holds records"
    try:
        conn = psycopg.connect(store.dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise connection_failed(store.dsn, exc) from exc
    with conn:
        keep.last_ok = [row[0] for row in conn.execute(_LAST_OK)]
        if not apply or result.skipped:
            if not result.skipped:
                result.counts = count(conn, cut, keep)
            result.seconds = time.monotonic() - started
            return result
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,)).fetchone()
        if not (row and row[0]):
            result.skipped = "another prune of this audit database is running"
            result.seconds = time.monotonic() - started
            return result
        try:
            for table in TABLES:
                sizes = delete_batches(conn, table, cut, keep, settings.batch_size)
                result.counts[table] = sum(sizes)
                result.batches += len(sizes)
                result.largest_batch = max([result.largest_batch, *sizes])
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    result.seconds = time.monotonic() - started
    record(store, result)
    return result


def record(store: AuditStore, result: PruneResult) -> int:
    """The audit row of a prune that deleted: a 'maintenance' check run with the counts."""
    params = {k: v for k, v in result.as_dict().items() if k not in ("applied", "skipped")}
    run_id = store.start_check_run(CHECK_NAME, "audit", params, PURPOSE, None)
    store.finish_check_run(run_id, "ok", 0, result.seconds * 1000)
    return run_id
