"""What the `remediation` command prints: plain tables, --json, durations and schedules."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

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
    """Print data as JSON under --json, else the human text."""
    if args.json:
        print(json.dumps(data, default=str, indent=2))
    else:
        print(human)


def indent(text: str) -> str:
    """Every line of text four spaces in (docstrings under their action)."""
    return "\n".join("    " + line for line in text.splitlines())


def to_second(moment: datetime) -> datetime:
    """moment rounded to the nearest whole second."""
    return (moment + timedelta(milliseconds=500)).replace(microsecond=0)


def describe(sched: Any) -> str:
    """'every 60s' or the crontab's five fields, as an operator wrote them."""
    if hasattr(sched, "_orig_minute"):
        parts = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        return " ".join(str(getattr(sched, f"_orig_{p}")) for p in parts)
    seconds = getattr(sched, "seconds", None)
    return f"every {seconds:g}s" if seconds is not None else str(sched)


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
