"""`remediation secrets`: the log secrets scan as it stands (runbook 004 "Security Check
Failures"): each configured file with the offset reached, the bytes behind and its leaking
line numbers, and the originals kept in the quarantine folder. Never a line of any log."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from remediation import quarantine
from remediation.cli.output import emit, table
from remediation.settings import Settings


def add_secrets_parser(sub: Any) -> None:
    """Add the verb to the parser."""
    sub.add_parser("secrets", help="log secrets scan: files, offsets, leaking lines, quarantine")


def cmd_secrets(args: argparse.Namespace, s: Settings) -> int:
    from remediation.clients import redis as redis_clients
    from remediation.security import log_scan

    cfg = s.secrets
    files, skipped = log_scan.matched_files(cfg.files, cfg.max_files, cfg.quarantine_dir)
    rows = log_scan.status(redis_clients.state(s), files)
    kept = [
        {
            "copy": str(q.path),
            "from": q.note.get("source") or q.note.get("from"),
            "at": q.at,
            "leaking_lines": q.note.get("leaking_lines"),
        }
        for q in quarantine.listed(Path(cfg.quarantine_dir))
    ]
    data = {"files": rows, "skipped": skipped, "quarantined": kept}
    human = "\n\n".join(
        [
            table(rows, ["file", "size", "offset", "behind", "leaking_lines", "lines"]),
            "skipped (not scanned): " + (", ".join(skipped) if skipped else "(none)"),
            "quarantine "
            + cfg.quarantine_dir
            + ":\n"
            + table(kept, ["copy", "from", "at", "leaking_lines"]),
        ]
    )
    emit(args, data, human)
    return 0
