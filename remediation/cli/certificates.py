"""`remediation certificates`: every configured TLS endpoint's certificate as clients see it
now (like `certbot certificates`, but read over the network): expiry, days left, whether it
verifies and names the server. Read-only; nothing is audited or renewed."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from remediation.cli.output import emit, table
from remediation.security.certificates import CertInfo, band, probe
from remediation.settings import Settings
from remediation.settings.certificates import CertificateTarget


def add_parser(sub: Any) -> None:
    sub.add_parser("certificates", help="configured TLS certificates: expiry, name, trust, now")


def _state(info: CertInfo, s: Settings) -> str:
    """ok, or what the tls_certificates check would report, worst first."""
    if info.error is not None:
        return "unreachable"
    days = info.days_left()
    if days is not None and days <= 0:
        return "expired"
    problems = [] if days is None or band(days, s.certificates) is None else ["expiring"]
    problems += [] if info.name_matches else ["name_mismatch"]
    problems += ["untrusted"] if info.untrusted else []
    return ",".join(problems) or "ok"


def _row(t: CertificateTarget, info: CertInfo, s: Settings) -> dict[str, Any]:
    return {
        "name": t.name,
        "endpoint": f"{t.host}:{t.port}",
        "server_name": t.expected_name,
        "not_after": info.not_after.isoformat() if info.not_after else None,
        "days_left": info.days_left(),
        "verified": info.verified,
        "name_matches": info.name_matches if info.error is None else None,
        "state": _state(info, s),
        "reason": info.error or info.verify_message or "",
    }


def cmd_certificates(args: argparse.Namespace, s: Settings) -> int:
    targets = s.certificates.targets
    if not targets:
        emit(args, {"certificates": []}, "no certificates (REMEDIATION_CERTIFICATES__TARGETS)")
        return 0
    with ThreadPoolExecutor(min(s.certificates.workers, len(targets))) as pool:
        infos = list(pool.map(lambda t: probe(t, s.certificates), targets))
    rows = [_row(t, info, s) for t, info in zip(targets, infos, strict=True)]
    columns = ["name", "endpoint", "server_name", "not_after", "days_left", "state", "reason"]
    emit(args, {"certificates": rows}, table(rows, columns, wide="reason"))
    return 0


COMMANDS = {"certificates": cmd_certificates}
