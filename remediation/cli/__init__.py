"""The `remediation` command: status, history, report, breakers, schedule, playbook, run, db...

Human tables by default, --json for machines. Exit codes: 0 ok, 1 failure, 2 bad usage or
bad configuration. The verbs are in ``commands``, what they print in ``output``; the parser
and ``main`` are here.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from remediation.cli import approvals, certificates, doctor, serve, watch
from remediation.cli.access import cmd_unblock
from remediation.cli.commands import (
    cmd_breakers,
    cmd_db,
    cmd_history,
    cmd_pause,
    cmd_playbook,
    cmd_report,
    cmd_resume,
    cmd_run,
    cmd_schedule,
    cmd_status,
    queue_depths,
)
from remediation.cli.images import cmd_images
from remediation.cli.keys import add_keys_parser, cmd_keys
from remediation.cli.output import describe, emit, parse_since, shown, table
from remediation.cli.secrets import add_secrets_parser, cmd_secrets
from remediation.errors import AuditError, ConfigError, RemediationError
from remediation.settings import Settings, get_settings

__all__ = [
    "COMMANDS",
    "build_parser",
    "describe",
    "emit",
    "main",
    "parse_since",
    "queue_depths",
    "shown",
    "table",
]


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
    rp.add_argument(
        "--incident", help="the timeline of one incident instead (findings' incident_id)"
    )
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
    verbs = (
        "upgrade: create/upgrade the schema; replay: write spooled rows now; prune: count"
        " (--apply: delete) audit rows older than REMEDIATION_RETENTION__*"
    )
    d.add_argument("verb", choices=["upgrade", "replay", "prune"], help=verbs)
    d.add_argument("--apply", action="store_true", help="prune: delete (default: count only)")
    pa = sub.add_parser("pause", help="maintenance: suppress every action")
    pa.add_argument("--reason", default="maintenance")
    pa.add_argument("--seconds", type=int, default=None, help="resume by itself after this")
    sub.add_parser("resume", help="end a maintenance pause")
    sub.add_parser("images", help="compose services update_images looks after, their images")
    ub = sub.add_parser("unblock", help="lift a client ban (Redis and nft), audited")
    ub.add_argument("ip")
    ub.add_argument("--reason", default="by hand")
    certificates.add_parser(sub)
    add_keys_parser(sub)
    add_secrets_parser(sub)
    serve.add_parser(sub)
    watch.add_parser(sub)
    approvals.add_parser(sub)
    doctor.add_parser(sub)
    return p


COMMANDS = {
    "status": cmd_status,
    "history": cmd_history,
    "report": cmd_report,
    "breakers": cmd_breakers,
    "schedule": cmd_schedule,
    "playbook": cmd_playbook,
    "run": cmd_run,
    "db": cmd_db,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "images": cmd_images,
    "unblock": cmd_unblock,
    **certificates.COMMANDS,
    "keys": cmd_keys,
    "secrets": cmd_secrets,
    **serve.COMMANDS,
    **watch.COMMANDS,
    **approvals.COMMANDS,
    **doctor.COMMANDS,
}


DAEMONS = frozenset({"serve", "watch"})
"""Long-lived commands: they write to sockets a peer may have closed, which must be an error
they handle (EPIPE), never SIGPIPE killing the process."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command not in DAEMONS:
        # a command whose output is the answer: `remediation ... | head` should end quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.command == "breakers":
        if args.verb == "reset" and not args.name:
            print("usage: remediation breakers reset NAME", file=sys.stderr)
            return 2
        args.reset = args.name if args.verb == "reset" else None
    if args.command == "report":
        from remediation.incident_report import valid_id
        from remediation.report import parse_window

        try:
            args.since_text, args.since = args.since, parse_window(args.since)
            if args.incident is not None:
                valid_id(args.incident)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            flag = "--incident" if isinstance(exc, ValueError) else "--since"
            print(f"remediation report: {flag} {exc}", file=sys.stderr)
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
