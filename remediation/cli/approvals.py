"""`remediation approvals`, `approve ID`, `deny ID --reason`: decide approvals from a shell.

The decider is audited as ``cli:<user>`` (the system user running the command). An approved
call is sent through the broker to the worker (signed approval header), which re-computes
the plan and acts only on what was approved and is still true; the guards still apply.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from remediation.cli.access import user
from remediation.cli.output import emit
from remediation.settings import Settings


def add_parser(sub: Any) -> None:
    a = sub.add_parser("approvals", help="pending approvals with their plans (--all: recent)")
    a.add_argument("--all", action="store_true", help="recent approvals in any state")
    for verb, what in (("approve", "approve a pending call"), ("deny", "deny a pending call")):
        p = sub.add_parser(verb, help=f"{what} (remediation approvals lists them)")
        p.add_argument("id", help="the approval id (16 hex characters)")
        p.add_argument(
            "--reason", required=verb == "deny", default="", help="why (required for deny)"
        )


def _service(s: Settings, send: bool) -> Any:
    from remediation.approvals import Approvals
    from remediation.audit.store import AuditStore

    dispatch = None
    if send:
        from remediation import signing
        from remediation.celery_app import get_app
        from remediation.tasks import dispatch_via

        dispatch = dispatch_via(get_app(), signing.key_of(s))
    return Approvals(s, AuditStore(s.audit_dsn.get_secret_value()), dispatch)


def _age(epoch: float | None, now: float) -> str:
    if epoch is None:
        return ""
    seconds = int(epoch - now)
    return f"in {seconds}s" if seconds >= 0 else f"{-seconds}s ago"


def cmd_approvals(args: argparse.Namespace, s: Settings) -> int:
    service = _service(s, send=False)
    found = service.recent() if args.all else service.pending()
    now = time.time()
    rows = [a.as_dict() for a in found]
    lines = []
    for a in found:
        lines.append(
            f"{a.id}  {a.state:<9} {a.action} on {a.resource}"
            f"  (expires {_age(a.expires_at, now)}"
            + (f"; {a.state} by {a.decided_by}" if a.decided_by else "")
            + ")"
        )
        lines.append(f"    plan: {a.plan.get('summary', '')}")
        lines += [f"      - {i['what']}" for i in a.plan.get("items", [])]
    human = "\n".join(lines) if lines else "no approvals" + ("" if args.all else " pending")
    emit(args, rows, human)
    return 0


def _decide(args: argparse.Namespace, s: Settings, approve: bool) -> int:
    from remediation.approvals.state import valid_id

    if not valid_id(args.id):
        print(f"remediation: {args.id[:40]!r} is not an approval id", file=sys.stderr)
        return 2
    if len(args.reason) > 500:
        print("remediation: --reason: at most 500 characters", file=sys.stderr)
        return 2
    result = _service(s, send=approve).decide(args.id, approve, f"cli:{user()}", args.reason)
    data = {"result": result.result, "message": result.message}
    if result.approval is not None:
        data["approval"] = result.approval.as_dict()
    emit(args, data, result.message)
    return 0 if result.ok else 1


def cmd_approve(args: argparse.Namespace, s: Settings) -> int:
    return _decide(args, s, True)


def cmd_deny(args: argparse.Namespace, s: Settings) -> int:
    if not args.reason.strip():
        print("remediation deny: --reason is required", file=sys.stderr)
        return 2
    return _decide(args, s, False)


COMMANDS = {"approvals": cmd_approvals, "approve": cmd_approve, "deny": cmd_deny}
