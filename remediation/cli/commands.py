"""The verbs of the `remediation` command, one function each: (args, settings) -> exit code.

Heavy imports (Celery, the audit store, Redis) happen inside the verb that needs them, so
`remediation --help` and a bad configuration answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from remediation import playbook, registry
from remediation.calls import UNDECIDED
from remediation.cli.output import describe, emit, indent, shown, table, to_second
from remediation.settings import Settings


def cmd_playbook(args: argparse.Namespace, s: Settings) -> int:
    registry.load_all()
    rows = []
    for rule in playbook.RULES:
        if rule.run == "check":
            follow = registry.CHECKS[rule.action]
            guards = "follow-up check (read-only)"
            rows.append(_rule_row(rule, follow.task_name, guards, follow.doc))
            continue
        spec = registry.ACTIONS[rule.action]
        rows.append(_rule_row(rule, spec.task_name, _guards(spec.guards), spec.doc))
    checks = [{"check": c.task_name, "doc": c.doc} for c in registry.CHECKS.values()]
    human = [table(rows, ["finding", "min_severity", "action", "guards"]), ""]
    for row in rows:
        human += [f"{row['action']}  (runbook {row['runbook']})", indent(row["doc"]), ""]
    human += ["Checks:"] + [f"{c['check']}\n{indent(c['doc'])}" for c in checks]
    emit(args, {"rules": rows, "checks": checks}, "\n".join(human))
    return 0


def _guards(g: registry.GuardOptions) -> str:
    """The guards an action declares, as the playbook table names them."""
    guards = [
        f"cooldown {int(g.cooldown.total_seconds())}s" if g.cooldown else "",
        f"budget {g.max_per_hour}/h" if g.max_per_hour else "",
        "breaker" if g.breaker else "",
        "lock" if g.lock else "",
        "verify" if g.verify else "",
    ]
    return ", ".join(x for x in guards if x)


def _rule_row(rule: playbook.Rule, task_name: str, guards: str, doc: str) -> dict[str, Any]:
    return {
        "finding": rule.kind,
        "min_severity": rule.min_severity.value,
        "action": task_name,
        "guards": guards,
        "runbook": rule.runbook,
        "doc": doc,
    }


def cmd_schedule(args: argparse.Namespace, s: Settings) -> int:
    from remediation.celery_app import beat_schedule
    from remediation.slots import grid_slot, is_interval
    from remediation.tasks import EXPIRE_TASK, PRUNE_TASK

    now = datetime.now(UTC)
    rows = []
    entries, offsets = beat_schedule(s.schedule_module, prune=s.retention.enabled)
    for name, entry in entries.items():
        if name in (EXPIRE_TASK, PRUNE_TASK):  # internal entries, not the operator's
            continue
        sched = entry["schedule"]
        next_run: datetime | None
        if is_interval(sched):  # on its grid (remediation.beat)
            every = sched.run_every.total_seconds()
            due = grid_slot(now.timestamp(), every, offsets[name]) + every
            next_run = to_second(datetime.fromtimestamp(due, UTC))
        else:
            due_in = sched.remaining_estimate(now)
            next_run = to_second(now + due_in) if due_in is not None else None
        rows.append(
            {
                "entry": name,
                "task": entry["task"],
                "schedule": describe(sched),
                "next_run": next_run,
                "kwargs": json.dumps(entry["kwargs"]),
            }
        )
    emit(args, rows, table(rows, ["entry", "task", "schedule", "next_run", "kwargs"]))
    return 0


def _state(s: Settings) -> Any:
    from remediation.clients import redis as redis_clients

    return redis_clients.state(s)


def cmd_breakers(args: argparse.Namespace, s: Settings) -> int:
    from remediation.guards import breaker, keys

    r = _state(s)
    if args.reset:
        if not r.sismember(keys.BREAKER_INDEX, args.reset):
            print(f"no breaker named {args.reset!r}; see `remediation breakers`", file=sys.stderr)
            return 1
        from remediation.audit.store import AuditStore

        # audited first: when the audit database does not answer, the breaker stays as it is
        action, _, target = args.reset.partition(":")
        AuditStore(s.audit_dsn.get_secret_value()).add_decision(
            action=action,
            target=target or "?",
            resource=target or "?",
            decision="breaker_reset",
            guard="breaker",
            reason="reset by operator",
        )
        breaker.reset(r, args.reset)
        emit(args, {"reset": args.reset}, f"breaker {args.reset} reset: closed")
        return 0
    rows = breaker.snapshot(r)
    for row in rows:
        if row["open_until"]:
            row["open_until"] = datetime.fromtimestamp(row["open_until"], UTC)
    cols = ["name", "state", "calls_in_window", "failures_in_window", "open_until", "times_opened"]
    emit(args, rows, table(rows, cols))
    return 0


def cmd_history(args: argparse.Namespace, s: Settings) -> int:
    from remediation.audit.store import AuditStore

    rows = AuditStore(s.audit_dsn.get_secret_value()).history(
        action=args.action,
        target=args.target,
        outcome=args.outcome,
        since=args.since,
        limit=args.limit,
    )
    cols = ["decided_at", "action", "resource", "decision", "guard", "outcome", "verification"]
    emit(args, rows, table(shown(rows), [*cols, "reason"], wide="reason"))
    return 0


def cmd_report(args: argparse.Namespace, s: Settings) -> int:
    from remediation import incident_report, report
    from remediation.audit.store import AuditStore

    store = AuditStore(s.audit_dsn.get_secret_value())
    if args.incident is not None:
        try:
            timeline = incident_report.build(store, args.incident)
        except incident_report.IncidentNotFound as exc:
            print(f"remediation report: {exc}", file=sys.stderr)
            return 1
        emit(args, timeline, incident_report.render(timeline))
        return 0
    data = report.build(store, args.since)
    emit(args, data, report.render(data, args.since_text))
    return 0


def queue_depths(s: Settings, queues: Sequence[str] = ("celery",)) -> dict[str, int]:
    """Pending messages per queue: the list plus its priority sub-lists (Redis broker)."""
    from remediation import celery_cluster
    from remediation.clients import redis as redis_clients

    url = s.broker_url.get_secret_value()
    if not celery_cluster.is_redis(url):
        return {}
    r = redis_clients.client(url)
    by_step = celery_cluster.redis_depths(r, queues)
    depths = {q: sum(steps.values()) for q, steps in by_step.items()}
    depths[celery_cluster.UNACKED] = r.hlen(celery_cluster.UNACKED)
    return depths


def cmd_status(args: argparse.Namespace, s: Settings) -> int:
    from remediation import app
    from remediation.audit.store import AuditStore
    from remediation.clients.redis import text
    from remediation.guards import breaker, keys

    r = _state(s)
    # A connection of its own, closed here: a pooled one would stay behind mid-poll, and a
    # process that forks afterwards (a test session) would hang closing it in the child.
    with app.connection_for_write() as conn:
        pings = app.control.inspect(timeout=1.0, connection=conn).ping() or {}
    paused = r.get(keys.PAUSE)
    data: dict[str, Any] = {
        "workers": sorted(pings),
        "paused": text(paused) if paused is not None else None,
        "dry_run": s.guards.dry_run,
        "queues": queue_depths(s),
        "breakers": [b for b in breaker.snapshot(r) if b["state"] != "closed"],
        "recent": AuditStore(s.audit_dsn.get_secret_value()).history(limit=10),
        "watch": _watch_sources(r),
        "doctor": _doctor_last(r),
    }
    recent = ["decided_at", "action", "resource", "decision", "outcome", "verification"]
    human = [
        f"workers:  {len(pings)} answering {', '.join(sorted(pings)) or '(none: start one with make run)'}",
        f"paused:   {data['paused'] if paused is not None else 'no'}",
        f"dry-run:  {'yes' if s.guards.dry_run else 'no'}",
        "queues:   " + ", ".join(f"{k}={v}" for k, v in data["queues"].items()),
        "breakers not closed:",
        table(data["breakers"], ["name", "state", "failures_in_window", "times_opened"]),
        "event sources (remediation watch):",
        table(data["watch"], ["source", "holder", "received", "checks", "coalesced", "dropped"]),
        "recent decisions:",
        table(shown(data["recent"]), [*recent, "reason"], wide="reason"),
        *_doctor_lines(data["doctor"]),
    ]
    emit(args, data, "\n".join(human))
    return 0


def _doctor_last(r: Any) -> dict[str, Any] | None:
    from remediation.doctor import at_start

    return at_start.last(r)


def _doctor_lines(report: dict[str, Any] | None) -> list[str]:
    """The last doctor report a worker ran at start: when, the counts, the rows not ✓."""
    if report is None:
        return ["doctor:   no report (a worker runs it at start; or run `remediation doctor`)"]
    c = report.get("counts", {})
    head = (
        f"doctor:   {report.get('at')} on {report.get('host', '?')}: {c.get('ok', 0)} ok, {c.get('fail', 0)} failed,"
        f" {c.get('unknown', 0)} cannot tell, {c.get('blocking', 0)} blocking"
    )
    rows = [row for row in report.get("rows", []) if row.get("status") != "ok"]
    if not rows:
        return [head]
    cols = ["status", "area", "target", "what", "fix"]
    return [head, table(rows, cols, wide="fix")]


def _watch_sources(r: Any) -> list[dict[str, Any]]:
    """Each event source: who holds its lease now (none: no watcher listens) and its counters
    since the stats began (rem:watch:stats:<source>, written by the watchers)."""
    from remediation.clients.redis import text
    from remediation.guards import keys
    from remediation.settings.watch import SOURCES

    out = []
    for name in SOURCES:
        holder = r.get(keys.watch_lease(name))
        stats = {text(k): text(v) for k, v in r.hgetall(keys.watch_stats(name)).items()}
        if holder is None and not stats:
            continue

        def n(prefix: str, stats: dict[str, str] = stats) -> int:
            return sum(int(v) for k, v in stats.items() if k.startswith(prefix) and v.isdigit())

        out.append(
            {
                "source": name,
                "holder": text(holder) if holder is not None else "(none)",
                "received": n("received"),
                "checks": n("checks:"),
                "coalesced": n("coalesced"),
                "dropped": n("dropped:"),
                "reconnects": n("reconnects"),
            }
        )
    return out


def cmd_run(args: argparse.Namespace, s: Settings) -> int:
    from remediation.runner import Runner

    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        print(f"--kwargs is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(kwargs, dict):
        print("--kwargs must be a JSON object", file=sys.stderr)
        return 2
    actions: list[dict[str, Any]] = []

    def in_process(task_name: str, kw: dict[str, Any], trigger: Any) -> None:
        if task_name.startswith(registry.CHECK_PREFIX):  # a follow-up check from the playbook
            follow = runner.run_check(task_name, kw)
            actions.append({"action": task_name, "outcome": follow.status})
            return
        outcome = runner.run_action(task_name, kw, trigger=trigger)
        actions.append({"action": task_name, **outcome.as_dict()})

    runner = Runner(s, in_process)
    purpose = "detect" if args.act else "manual"
    outcome = runner.run_check(args.check, kwargs, purpose=purpose, act=args.act)
    data = {**outcome.as_dict(), "actions": actions}
    human = [
        f"check {args.check}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else "")
    ]
    columns = ["kind", "severity", "subject", "observed", "threshold", "summary"]
    human.append(table([f.model_dump() for f in outcome.findings], columns))
    if args.act:
        human += [
            "actions:",
            table(actions, ["action", "outcome", "verification", "reason"], wide="reason"),
        ]
    elif outcome.findings:
        human.append("(read-only: add --act to run the playbook's actions)")
    emit(args, data, "\n".join(human))
    undecided = [a for a in actions if a.get("outcome") in UNDECIDED]
    return 0 if outcome.status == "ok" and not undecided else 1


def cmd_db(args: argparse.Namespace, s: Settings) -> int:
    from remediation.audit.store import AuditStore

    if args.verb == "replay":  # what the worker does by itself once PostgreSQL answers
        replayed = AuditStore.from_settings(s).replay_spool()
        human = f"replayed {replayed} spooled audit row(s) from {s.audit.spool_dir}"
        emit(args, {"replayed": replayed, "spool_dir": s.audit.spool_dir}, human)
        return 0
    if args.verb == "prune":
        return _prune(args, s, AuditStore.from_settings(s))
    applied = AuditStore(s.audit_dsn.get_secret_value()).upgrade()
    human = f"applied migrations {applied}" if applied else "audit schema is up to date"
    emit(args, {"applied": applied}, human)
    return 0


def _prune(args: argparse.Namespace, s: Settings, store: Any) -> int:
    from remediation.audit import retention

    result = retention.prune(store, s.retention, _state(s), apply=args.apply)
    verb = "deleted" if args.apply else "would delete"
    rows = [{"table": t, verb.replace(" ", "_"): n} for t, n in result.counts.items()]
    cut = result.cutoffs
    reach = "" if cut["findings"] == cut["audit"] else f" (findings {cut['findings']})"
    human = [
        f"cutoffs: audit {cut['audit']}{reach}, check runs without findings"
        f" {cut['check_runs']}, observations {cut['observations']}",
        f"kept whatever their age: {result.kept_incidents} open incident(s),"
        f" {result.kept_findings} finding(s) of live approvals",
        table(rows, ["table", verb.replace(" ", "_")]),
    ]
    if result.skipped:
        human.insert(0, f"nothing pruned: {result.skipped}")
    elif args.apply:
        human.append(f"{result.batches} batch(es) of at most {s.retention.batch_size} rows,")
        human[-1] += f" {result.seconds:.1f} s; audited as check run {retention.CHECK_NAME!r}"
    else:
        human.append("(dry run: add --apply to delete)")
    emit(args, result.as_dict(), "\n".join(human))
    return 1 if result.skipped else 0


def cmd_pause(args: argparse.Namespace, s: Settings) -> int:
    from remediation.guards.chain import set_pause

    set_pause(_state(s), args.reason, args.seconds)
    until = f" for {args.seconds}s" if args.seconds else " until `remediation resume`"
    emit(args, {"paused": args.reason, "seconds": args.seconds}, f"paused{until}: {args.reason}")
    return 0


def cmd_resume(args: argparse.Namespace, s: Settings) -> int:
    from remediation.guards.chain import clear_pause

    was = clear_pause(_state(s))
    emit(args, {"resumed": was}, "resumed" if was else "was not paused")
    return 0
