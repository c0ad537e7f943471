"""`remediation unblock IP`: lift a ban by hand (runbook 001 "Block suspicious IPs"), audited.

The decision is audited first (a guard_decisions row: action unblock_ip, decision unblock,
guard operator): when the audit database does not answer, the ban stays. Then the ban goes
from the state Redis and, with REMEDIATION_ACCESS__NFT on, from this host's nft set; an
action_runs row records what was removed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from remediation.cli.output import emit
from remediation.settings import Settings


def cmd_unblock(args: argparse.Namespace, s: Settings) -> int:
    from remediation.audit.store import AuditStore
    from remediation.clients import redis as redis_clients
    from remediation.security import access_logs as al
    from remediation.security import bans

    ip = al.parse_ip(args.ip.strip()) if len(args.ip) <= 64 else None
    if ip is None:
        print(f"remediation unblock: {args.ip[:64]!r} is not a client address", file=sys.stderr)
        return 2
    who = f"{user()}: {args.reason}"[:300]
    store = AuditStore(s.audit_dsn.get_secret_value())
    resource = f"ip:{ip}"
    decision = store.add_decision(
        action="unblock_ip",
        target="self",
        resource=resource,
        decision="unblock",
        guard="operator",
        reason=f"unblocked by operator ({who})",
    )
    started = time.monotonic()
    result: dict[str, object] = {
        "ip": str(ip),
        "redis": bans.unban(redis_clients.state(s), str(ip)),
    }
    error = None
    if s.access.nft:
        try:
            bans.Nft(s.access).remove(str(ip))
            result["nft"] = True
        except bans.BanError as exc:
            error = str(exc)
    store.add_action_run(
        action="unblock_ip",
        target="self",
        resource=resource,
        params={"ip": str(ip), "reason": args.reason[:300]},
        outcome="failed" if error else "succeeded",
        error=error,
        result=result,
        duration_ms=(time.monotonic() - started) * 1000,
        decision_id=decision,
        verification="skipped",
    )
    was = "was banned" if result["redis"] else "was not banned in Redis"
    human = f"unblocked {ip} ({was})" + (f"; nft: {error}" if error else "")
    emit(args, {**result, "error": error}, human)
    return 1 if error else 0


def user() -> str:
    """Who ran the command, as far as the system knows (for the audit row)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (a bare container)
        return "unknown"
