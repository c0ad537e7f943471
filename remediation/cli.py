"""The `remediation` command: status, history, report, breakers, schedule, playbook, run, db...

Human tables by default, --json for machines. Exit codes: 0 ok, 1 failure, 2 bad usage or
bad configuration.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from remediation import playbook, registry
from remediation.calls import UNDECIDED
from remediation.errors import AuditError, ConfigError, RemediationError
from remediation.settings import Settings, get_settings

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
WIDE_CHARS = 200
"""How much of a reason (why refused, deferred or failed) a table row shows."""


def parse_since(value: str) -> datetime:
    """'30m', '7d' or an ISO timestamp -> aware datetime."""
    match = _DURATION.match(value)
    if match:
        return datetime.now(UTC) - timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use 30m, 12h, 7d or an ISO time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], wide: str = "") -> str:
    """A plain text table; long cells are cut so a row stays on one line (the ``wide``
    column, a reason put last, keeps up to WIDE_CHARS)."""
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c), WIDE_CHARS if c == wide else 60) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, *body])


def _cell(value: Any, most: int = 60) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    text = " ".join(str(value).split())
    return text if len(text) <= most else text[: most - 3] + "..."


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data, default=str, indent=2))
    else:
        print(human)


# --- commands ------------------------------------------------------------------------------


def cmd_playbook(args: argparse.Namespace, s: Settings) -> int:
    registry.load_all()
    rows = []
    for rule in playbook.RULES:
        if rule.run == "check":
            check_spec = registry.CHECKS[rule.action]
            rows.append({
                "finding": rule.kind, "min_severity": rule.min_severity.value,
                "action": check_spec.task_name, "guards": "follow-up check (read-only)",
                "runbook": rule.runbook, "doc": check_spec.doc,
            })  # fmt: skip
            continue
        spec = registry.ACTIONS[rule.action]
        g = spec.guards
        guards = [
            f"cooldown {int(g.cooldown.total_seconds())}s" if g.cooldown else "",
            f"budget {g.max_per_hour}/h" if g.max_per_hour else "",
            "breaker" if g.breaker else "",
            "lock" if g.lock else "",
            "verify" if g.verify else "",
        ]
        rows.append({
            "finding": rule.kind, "min_severity": rule.min_severity.value,
            "action": spec.task_name, "guards": ", ".join(x for x in guards if x),
            "runbook": rule.runbook, "doc": spec.doc,
        })  # fmt: skip
    checks = [{"check": c.task_name, "doc": c.doc} for c in registry.CHECKS.values()]
    human = [table(rows, ["finding", "min_severity", "action", "guards"]), ""]
    for row in rows:
        human += [f"{row['action']}  (runbook {row['runbook']})", _indent(row["doc"]), ""]
    human += ["Checks:"] + [f"{c['check']}\n{_indent(c['doc'])}" for c in checks]
    emit(args, {"rules": rows, "checks": checks}, "\n".join(human))
    return 0


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _to_second(moment: datetime) -> datetime:
    return (moment + timedelta(milliseconds=500)).replace(microsecond=0)


def describe(sched: Any) -> str:
    """'every 60s' or the crontab's five fields, as an operator wrote them."""
    if hasattr(sched, "_orig_minute"):
        parts = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        return " ".join(str(getattr(sched, f"_orig_{p}")) for p in parts)
    seconds = getattr(sched, "seconds", None)
    return f"every {seconds:g}s" if seconds is not None else str(sched)


def cmd_schedule(args: argparse.Namespace, s: Settings) -> int:
    from remediation.schedule import load_schedule

    now = datetime.now(UTC)
    rows = []
    for name, entry in load_schedule(s.schedule_module).items():
        sched = entry["schedule"]
        due_in = sched.remaining_estimate(now) if hasattr(sched, "remaining_estimate") else None
        rows.append({
            "entry": name, "task": entry["task"], "schedule": describe(sched),
            "next_run": _to_second(now + due_in) if due_in is not None else None,
            "kwargs": json.dumps(entry["kwargs"]),
        })  # fmt: skip
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
        action=args.action, target=args.target, outcome=args.outcome, since=args.since,
        limit=args.limit,
    )  # fmt: skip
    cols = ["decided_at", "action", "resource", "decision", "guard", "outcome", "verification",
            "reason"]  # fmt: skip
    emit(args, rows, table(shown(rows), cols, wide="reason"))
    return 0


def shown(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows as the human table shows them: a call the guards or its resolve step
    stopped (refused, deferred, suppressed...) has its decision as its outcome, and the
    reason is the action run's error (why it failed, was refused or deferred after
    admission) or else the guard decision's reason."""
    out = []
    for row in rows:
        decision = row.get("decision")
        outcome = row.get("outcome") or (decision if decision != "admitted" else None)
        out.append({**row, "outcome": outcome, "reason": row.get("error") or row.get("reason")})
    return out


def cmd_report(args: argparse.Namespace, s: Settings) -> int:
    from remediation import report
    from remediation.audit.store import AuditStore

    data = report.build(AuditStore(s.audit_dsn.get_secret_value()), args.since)
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
    pings = app.control.inspect(timeout=1.0).ping() or {}
    paused = r.get(keys.PAUSE)
    data: dict[str, Any] = {
        "workers": sorted(pings),
        "paused": text(paused) if paused is not None else None,
        "dry_run": s.guards.dry_run,
        "queues": queue_depths(s),
        "breakers": [b for b in breaker.snapshot(r) if b["state"] != "closed"],
        "recent": AuditStore(s.audit_dsn.get_secret_value()).history(limit=10),
    }
    human = [
        f"workers:  {len(pings)} answering {', '.join(sorted(pings)) or '(none: start one with make run)'}",
        f"paused:   {data['paused'] if paused is not None else 'no'}",
        f"dry-run:  {'yes' if s.guards.dry_run else 'no'}",
        "queues:   " + ", ".join(f"{k}={v}" for k, v in data["queues"].items()),
        "breakers not closed:",
        table(data["breakers"], ["name", "state", "failures_in_window", "times_opened"]),
        "recent decisions:",
        table(shown(data["recent"]), ["decided_at", "action", "resource", "decision", "outcome",
                                      "verification", "reason"], wide="reason"),
    ]  # fmt: skip
    emit(args, data, "\n".join(human))
    return 0


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
    outcome = runner.run_check(args.check, kwargs, purpose="detect" if args.act else "manual",
                               act=args.act)  # fmt: skip
    data = {**outcome.as_dict(), "actions": actions}
    human = [
        f"check {args.check}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else "")
    ]
    human.append(table([f.model_dump() for f in outcome.findings],
                       ["kind", "severity", "subject", "observed", "threshold", "summary"]))  # fmt: skip
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
        emit(args, {"replayed": replayed, "spool_dir": s.audit.spool_dir},
             f"replayed {replayed} spooled audit row(s) from {s.audit.spool_dir}")  # fmt: skip
        return 0
    applied = AuditStore(s.audit_dsn.get_secret_value()).upgrade()
    emit(args, {"applied": applied},
         f"applied migrations {applied}" if applied else "audit schema is up to date")  # fmt: skip
    return 0


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


class _Verbs:
    """Adds verbs that each take --json too: `remediation --json history` and `remediation
    history --json` mean the same (SUPPRESS: a verb without the flag keeps the global one)."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub
        self._json = argparse.ArgumentParser(add_help=False)
        self._json.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
        )

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._sub.add_parser(name, parents=[self._json], **kwargs)
        return parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remediation", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = _Verbs(p.add_subparsers(dest="command", required=True))
    sub.add_parser("status", help="workers, queue depths, open breakers, recent actions")
    h = sub.add_parser("history", help="guard decisions and action runs, newest first")
    h.add_argument("--action")
    h.add_argument("--target")
    h.add_argument("--outcome", help="succeeded, failed, rejected, suppressed, dry_run ...")
    h.add_argument("--since", type=parse_since, help="30m, 12h, 7d or an ISO time")
    h.add_argument("--limit", type=int, default=50)
    rp = sub.add_parser("report", help="per runbook procedure: fired, acted, suppressed, fixed")
    rp.add_argument("--since", default="7d", help="window: 30m, 12h, 7d, 2w (default 7d)")
    b = sub.add_parser("breakers", help="circuit breakers; `breakers reset NAME` closes one")
    b.add_argument("verb", nargs="?", choices=["reset"])
    b.add_argument("name", nargs="?")
    sub.add_parser("schedule", help="beat_schedule.py entries and their next run times")
    sub.add_parser("playbook", help="finding kind -> actions, with guards and docstrings")
    r = sub.add_parser("run", help="run a check now (read-only unless --act)")
    r.add_argument("check")
    r.add_argument("--kwargs", default="{}", help='JSON, e.g. \'{"target": "self"}\'')
    r.add_argument("--act", action="store_true", help="run the playbook's actions in-process")
    d = sub.add_parser("db", help="audit database")
    d.add_argument("verb", choices=["upgrade", "replay"],
                   help="upgrade: create/upgrade the schema; replay: write spooled rows now")  # fmt: skip
    pa = sub.add_parser("pause", help="maintenance: suppress every action")
    pa.add_argument("--reason", default="maintenance")
    pa.add_argument("--seconds", type=int, default=None, help="resume by itself after this")
    sub.add_parser("resume", help="end a maintenance pause")
    return p


COMMANDS = {
    "status": cmd_status, "history": cmd_history, "report": cmd_report, "breakers": cmd_breakers,
    "schedule": cmd_schedule, "playbook": cmd_playbook, "run": cmd_run, "db": cmd_db,
    "pause": cmd_pause, "resume": cmd_resume,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # as a command: `remediation ... | head` should end quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    if args.command == "breakers":
        if args.verb == "reset" and not args.name:
            print("usage: remediation breakers reset NAME", file=sys.stderr)
            return 2
        args.reset = args.name if args.verb == "reset" else None
    if args.command == "report":
        from remediation.report import parse_window

        try:
            args.since_text, args.since = args.since, parse_window(args.since)
        except argparse.ArgumentTypeError as exc:
            print(f"remediation report: --since {exc}", file=sys.stderr)
            return 2
    try:
        settings = get_settings()
        from remediation.logging import configure_logging

        # the command's output is the answer; only warnings and errors are logged
        quiet = "DEBUG" if settings.log_level == "DEBUG" else "WARNING"
        configure_logging(quiet, settings.log_format)
        return COMMANDS[args.command](args, settings)
    except ConfigError as exc:
        print(f"remediation: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except AuditError as exc:
        print(f"remediation: {_audit_problem(exc, settings)}", file=sys.stderr)
        return 1
    except RemediationError as exc:
        print(f"remediation: {exc}", file=sys.stderr)
        return 1


def _audit_problem(exc: AuditError, s: Settings) -> str:
    """A write that failed on its connection says only "audit write failed": name where."""
    import psycopg

    from remediation.audit.store import connection_failed

    cause = exc.__cause__
    if isinstance(cause, psycopg.OperationalError) and "audit database" not in str(exc):
        return str(connection_failed(s.audit_dsn.get_secret_value(), cause))
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
