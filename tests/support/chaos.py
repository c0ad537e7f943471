"""How much chaos: the bounded form in `make test`, the full one in `make chaos`."""

from __future__ import annotations

import os

FULL = os.environ.get("REMEDIATION_CHAOS_FULL") == "1"


def scale(bounded: int, full: int) -> int:
    """How many times to do something: the bounded form in `make test`, the full one in chaos."""
    return full if FULL else bounded
