"""Elapsed time as the audit records it: milliseconds since a clock reading."""

from __future__ import annotations

import time
from collections.abc import Callable


def ms_since(
    started: float, *, digits: int = 3, clock: Callable[[], float] = time.monotonic
) -> float:
    """Milliseconds from ``started`` to now, rounded to ``digits``; ``clock`` is the clock
    ``started`` was read from (time.monotonic unless the caller used another)."""
    return round((clock() - started) * 1000, digits)
