"""What every latency benchmark reports of its samples: count, median, a nearest-rank tail
percentile and the maximum."""

from __future__ import annotations

import math
import statistics
from typing import Any


def summary(values: list[float], tail: float = 0.95, digits: int = 4) -> dict[str, Any]:
    """{"n", "p50", "p95" (or the tail asked for, nearest rank), "min", "max"}."""
    v = sorted(values)
    name = f"p{round(tail * 100)}"
    return {
        "n": len(v),
        "p50": round(statistics.median(v), digits),
        name: round(v[math.ceil(tail * len(v)) - 1], digits),
        "min": round(v[0], digits),
        "max": round(v[-1], digits),
    }
