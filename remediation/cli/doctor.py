"""`remediation doctor`: will every configured target and enabled action work when needed?

Exit 0 when nothing an enabled action needs is missing, 1 when something is (the ✗ rows
marked blocking), 2 on bad configuration or usage (as every command).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from remediation.cli.output import emit, table
from remediation.settings import Settings

MARKS = {"ok": "✓", "fail": "✗", "unknown": "?"}


def add_parser(sub: Any) -> None:
    d = sub.add_parser(
        "doctor", help="read-only checks: will every target and enabled action work? fixes"
    )
    d.add_argument(
        "--area",
        action="append",
        metavar="AREA",
        help="only this area (repeatable): postgres, folders, schedule, ...",
    )
    d.add_argument(
        "--send-test", action="store_true", help="probes that can (webhook) send a test message"
    )


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from remediation.doctor import runner

    try:
        report = runner.run(settings, args.area, send_test=args.send_test)
    except ValueError as exc:
        print(f"remediation doctor: --area: {exc}", file=sys.stderr)
        return 2
    emit(args, report.as_dict(), human(report))
    return report.exit_code


def human(report: Any) -> str:
    """The ✓/✗/? table with each ✗'s (and ?'s) fix under it, and a summary line."""
    cols = ["mark", "area", "target", "what", "detail"]
    cells = [_cells(MARKS[row.status], row) for row in report.rows]
    head, *body = table(cells, cols, wide="detail").splitlines()
    lines = [head] if report.rows else ["(no rows)"]
    for row, line in zip(report.rows, body, strict=False):
        lines.append(line)
        if row.status != "ok":
            needed = ", ".join(row.needed_by) or "the worker itself"
            state = "blocking" if report.blocks(row) else "not blocking"
            lines.append(f"      fix: {row.fix}")
            lines.append(f"      needed by: {needed} ({state})")
    return "\n".join([*lines, "", summary(report)])


def _cells(mark: str, row: Any) -> dict[str, str]:
    return {
        "mark": mark,
        "area": row.area,
        "target": row.target,
        "what": row.what,
        "detail": row.detail,
    }


def summary(report: Any) -> str:
    c = report.counts()
    verdict = (
        f"{c['blocking']} blocking: an enabled action (or the worker) will fail until fixed"
        if c["blocking"]
        else "nothing blocking"
    )
    return f"{c['ok']} ok, {c['fail']} failed, {c['unknown']} cannot tell; {verdict}"


COMMANDS = {"doctor": cmd_doctor}
