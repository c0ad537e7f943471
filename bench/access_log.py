"""The access-log review (runbook 003) against fail2ban-regex on the same 1,000,000 lines.

One generated combined-log-format file (1,000,000 lines; 5,000 clients; about 40 % of the
lines refused with 401, 403 or 429, the rest 200/302/404; a few requests with escaped
quotes), the same rule on both sides: a line whose status is 401, 403 or 429 counts for
its client. fail2ban-regex (Debian's fail2ban) gets it as the failregex
``^<HOST> \\S+ \\S+ \\[[^\\]]*\\] "(?:[^"\\\\]|\\\\.)*" (?:401|403|429) `` (the request may hold
escaped quotes, as Apache and nginx write them) and finds the dates itself;
ours is remediation.security's tail + Parser (the check's own code), reading the file in
runs of at most 64 MiB, with refusals counted per client. Both counts of matching lines
must agree (and agree with a plain count of the generated refusals).

Reported: lines per second for both (fail2ban-regex by wall time of the command, and by
the "processed in" time it prints, which leaves out its start-up), the ratio, and the
whole check (reading, parsing, the window state in a private redis-server) on the same
file as a third line.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

LINES = int(os.environ.get("REMEDIATION_BENCH_ACCESS_LINES", "1000000"))
CLIENTS = 5000
FAILREGEX = r'^<HOST> \S+ \S+ \[[^\]]*\] "(?:[^"\\]|\\.)*" (?:401|403|429) '
STATUSES = (200, 200, 200, 200, 302, 404, 401, 401, 403, 429)


def generate(path: Path, lines: int, seed: int = 13) -> int:
    """The log; returns how many of its lines are refusals."""
    rnd = random.Random(seed)
    start = time.time() - 1800
    ips = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(1, CLIENTS)]
    ips += [f"2001:db8::{i:x}" for i in range(1, 50)]
    refused = 0
    with path.open("w") as fh:
        for n in range(lines):
            status = rnd.choice(STATUSES)
            refused += status in (401, 403, 429)
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(start + n * 0.0015))
            request = "GET /search?q=%22x%22 HTTP/1.1" if n % 97 else 'GET /a\\"b HTTP/1.1'
            fh.write(
                f'{rnd.choice(ips)} - - [{stamp}] "{request}" {status} {rnd.randint(0, 9999)}'
                f' "https://example.com/" "Mozilla/5.0 (X11; Linux x86_64)"\n'
            )
    return refused


def fail2ban(path: Path) -> dict[str, Any]:
    exe = shutil.which("fail2ban-regex") or "/usr/bin/fail2ban-regex"
    started = time.perf_counter()
    done = subprocess.run(
        [exe, "--print-no-missed", "--print-no-ignored", str(path), FAILREGEX],
        capture_output=True,
        text=True,
        timeout=3600,
        check=True,
    )
    wall = time.perf_counter() - started
    summary = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched", done.stdout)
    processed = re.search(r"\[processed in ([\d.]+) sec\]", done.stdout)
    assert summary is not None, done.stdout[-2000:]
    return {
        "lines": int(summary.group(1)),
        "matched": int(summary.group(3)),
        "seconds": round(wall, 3),
        "processed_seconds": float(processed.group(1)) if processed else None,
    }


def ours(path: Path) -> dict[str, Any]:
    from remediation.security import access_logs as al
    from remediation.security import tail

    parser = al.Parser("combined", (401, 403, 429), ("remote_addr", "status", "time"))
    started = time.perf_counter()
    pos, lines, matched, clients = None, 0, 0, set()
    while True:
        chunk = tail.read_new(str(path), pos, 64 << 20, 16384) if pos else _first(path)
        pos = chunk.position
        if not chunk.data:
            break
        hits = parser.parse(chunk.data, time.time(), 0.0)
        lines, matched = lines + hits.lines, matched + hits.matched
        clients.update(hits.times)
    return {
        "lines": lines,
        "matched": matched,
        "clients": len(clients),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _first(path: Path) -> Any:
    from remediation.security import tail

    st = path.stat()
    return tail.read_new(str(path), tail.Position(st.st_dev, st.st_ino, 0), 64 << 20, 16384)


def whole_check(path: Path) -> dict[str, Any]:
    """access_log_clients itself, from offset 0, against a private redis-server."""
    from remediation.checks.access import AccessLogClientsParams, access_log_clients
    from remediation.clients import redis as redis_clients
    from remediation.context import CheckContext
    from remediation.logging import get_logger
    from remediation.security import access_logs as al
    from remediation.security import tail
    from remediation.settings import get_settings
    from tests.support.services import RedisServer

    server = RedisServer().start()
    saved = dict(os.environ)
    try:
        os.environ.update(
            REMEDIATION_STATE_REDIS_URL=server.url(0),
            REMEDIATION_ACCESS__LOGS=json.dumps([{"name": "bench", "path": str(path)}]),
            REMEDIATION_ACCESS__FINDTIME_SECONDS="3600",
            REMEDIATION_ACCESS__MAX_BYTES_PER_RUN=str(64 << 20),
        )
        get_settings.cache_clear()
        redis_clients.reset()
        settings = get_settings()
        st = path.stat()
        r = redis_clients.state(settings)
        tail.save(r, al.position_key("bench"), tail.Position(st.st_dev, st.st_ino, 0))
        ctx = CheckContext(settings, get_logger())
        started, runs, findings = time.perf_counter(), 0, 0
        while True:
            runs += 1
            found = access_log_clients(ctx, AccessLogClientsParams())
            findings = len(found)
            pos = tail.load(r, al.position_key("bench"))
            if pos is None or pos.offset >= st.st_size:
                break
        return {
            "lines": LINES,
            "runs": runs,
            "findings": findings,
            "seconds": round(time.perf_counter() - started, 3),
        }
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        redis_clients.reset()
        server.stop()


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        path = Path(tmp) / "access.log"
        refused = generate(path, LINES)
        theirs = fail2ban(path)
        mine = ours(path)
        check = whole_check(path)
    assert theirs["lines"] == mine["lines"] == LINES, (theirs, mine)
    assert theirs["matched"] == mine["matched"] == refused, (theirs, mine, refused)
    f2b_rate = LINES / theirs["seconds"]
    f2b_processing = LINES / theirs["processed_seconds"] if theirs["processed_seconds"] else None
    rate = LINES / mine["seconds"]
    return {
        "lines": LINES,
        "refusals": refused,
        "fail2ban_regex": {**theirs, "lines_per_s": round(f2b_rate)},
        "ours": {**mine, "lines_per_s": round(rate)},
        "whole_check": {**check, "lines_per_s": round(LINES / check["seconds"])},
        "ratio_vs_wall": round(rate / f2b_rate, 1),
        "ratio_vs_processed": round(rate / f2b_processing, 1) if f2b_processing else None,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
