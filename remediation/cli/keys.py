"""`remediation keys`: the configured API keys with their age (never their values), and
`remediation keys rotated NAME` to record a rotation done by hand (runbook 003 "Rotate API
Keys"), audited like a breaker reset."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
import time
from typing import Any

from remediation.cli.output import emit, table
from remediation.settings import Settings

ROTATED_BY_HAND = "rotated_by_hand"
"""The guard decision an operator's record of a manual rotation is audited as."""


def add_keys_parser(sub: Any) -> None:
    k = sub.add_parser("keys", help="API keys: source, age, rotation due; `keys rotated NAME`")
    k.add_argument("verb", nargs="?", choices=["rotated"], help="record a rotation done by hand")
    k.add_argument("name", nargs="?")


def key_rows(s: Settings, recorded: dict[str, float], now: float) -> list[dict[str, Any]]:
    """One row per configured key: where it comes from, whether it is there, its age."""
    from remediation.security import api_keys as keys

    rows = []
    for key in s.api_keys.keys:
        value, missing = keys.read_key(key, s.api_keys.max_key_bytes)
        since, basis = keys.changed_at(key, recorded)
        age = keys.age_days(since, now)
        due = None if age is None or key.max_age_days is None else age > key.max_age_days
        rows.append(
            {
                "name": key.name,
                "source": keys.source_of(key),
                "present": value is not None,
                "missing": missing or None,
                "age_days": age,
                "age_from": basis,
                "max_age_days": key.max_age_days,
                "due": due,
                "rotatable": key.rotatable,
            }
        )
        del value  # never printed
    return rows


def cmd_keys(args: argparse.Namespace, s: Settings) -> int:
    import redis

    from remediation.clients import redis as redis_clients
    from remediation.security import api_keys as keys

    state = redis_clients.state(s)
    if args.verb == "rotated":
        return _record(args, s, state)
    if args.name:
        print("usage: remediation keys [rotated NAME]", file=sys.stderr)
        return 2
    try:
        recorded = keys.recorded_rotations(state)
    except redis.RedisError as exc:  # the files' ages are still worth showing
        print(f"remediation: rotations on record unavailable: {exc}", file=sys.stderr)
        recorded = {}
    rows = key_rows(s, recorded, time.time())
    cols = ["name", "source", "present", "age_days", "max_age_days", "due", "age_from"]
    emit(args, rows, table(rows, [*cols, "rotatable"]))
    return 0


def _record(args: argparse.Namespace, s: Settings, state: Any) -> int:
    import redis

    from remediation.audit.store import AuditStore
    from remediation.security import api_keys as keys

    key = s.api_keys.key(args.name or "")
    if key is None:
        names = ", ".join(k.name for k in s.api_keys.keys) or "(none configured)"
        print(
            f"no API key named {args.name!r} (REMEDIATION_API_KEYS__KEYS: {names})", file=sys.stderr
        )
        return 2
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    # audited first: when the audit database does not answer, nothing is recorded
    AuditStore(s.audit_dsn.get_secret_value()).add_decision(
        action="rotate_api_key",
        target=key.name,
        resource=f"apikey:{key.name}",
        decision=ROTATED_BY_HAND,
        guard="operator",
        reason=f"rotation done by hand, recorded by {who}",
    )
    now = time.time()
    try:
        keys.record_rotation(state, key.name, now)
    except redis.RedisError as exc:
        print(f"remediation: audited, but not recorded in the state Redis: {exc}", file=sys.stderr)
        return 1
    emit(args, {"rotated": key.name, "at": now, "by": who}, f"{key.name}: rotation recorded")
    return 0
