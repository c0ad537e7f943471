"""Chaos tests: real processes killed, restarted and cut off, then the counts checked.

`make test` runs them in a bounded form; `make chaos` sets REMEDIATION_CHAOS_FULL=1 for the
full form (at least 50 kills, 200+ schedule slots, 1,000 fuzz cases per action).
"""

from __future__ import annotations

import os

FULL = os.environ.get("REMEDIATION_CHAOS_FULL") == "1"


def scale(bounded: int, full: int) -> int:
    """How many times to do something: the bounded form in `make test`, the full one in chaos."""
    return full if FULL else bounded
