"""regenerate_headers' generation: a checked, repaired set vs a raw browserforge draw.

What runs, in the same run, offline (browserforge's bundled data):

* Baseline: ``HeaderGenerator(...).generate()`` with the shipped browsers, OS and locales,
  N times: what a scraper would get from the library alone.
* Ours: ``browser_headers.generate(...)`` N times, each with the previous set as the one to
  differ from: draw, repair for a top-level navigation, check consistency (client hints vs
  user agent, Sec-Fetch-*, sizes), draw again on a rejection or the same set.
* How many raw draws are inconsistent as browserforge gives them (before repair) and after
  repair: what the checks catch.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from remediation import browser_headers as bh
from remediation.settings import HeadersSettings

N = 300


def run(n: int = N) -> dict[str, Any]:
    cfg = HeadersSettings()
    browsers, systems, locales = list(cfg.browsers), list(cfg.os), list(cfg.locales)
    draw = bh.browserforge_source(tuple(browsers), tuple(systems), tuple(locales))
    draw()  # load the data once, outside the timings
    raw_s, raw_bad, repaired_bad = [], 0, 0
    for _ in range(n):
        clock = time.perf_counter()
        raw = draw()
        raw_s.append(time.perf_counter() - clock)
        raw_bad += bool(bh.problems(dict(raw), browsers, systems))
        repaired_bad += bool(bh.problems(bh.normalise(raw, locales), browsers, systems))
    ours_s, attempts, previous = [], [], None
    for _ in range(n):
        clock = time.perf_counter()
        made = bh.generate(browsers, systems, locales, previous)
        ours_s.append(time.perf_counter() - clock)
        attempts.append(made.attempts)
        previous = made.headers
    raw_ms, ours_ms = statistics.median(raw_s) * 1000, statistics.median(ours_s) * 1000
    return {
        "sets": n,
        "browserforge_raw_ms_p50": round(raw_ms, 3),
        "ours_ms_p50": round(ours_ms, 3),
        "ours_ms_p95": round(sorted(ours_s)[int(0.95 * n) - 1] * 1000, 3),
        "ratio_ours_to_raw": round(ours_ms / raw_ms, 2),
        "draws_per_set_mean": round(statistics.fmean(attempts), 2),
        "draws_per_set_max": max(attempts),
        "raw_inconsistent_share": round(raw_bad / n, 3),
        "after_repair_inconsistent_share": round(repaired_bad / n, 3),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
