"""Audit spool replay on a big backlog: peak RSS growth, streamed vs read whole.

A temp folder gets REMEDIATION_BENCH_SPOOL_MB (default 100) MiB of spool in four files (four
processes' worth, timestamps interleaved), each line a `check_run` record exactly as
AuditStore.start_check_run spools it (schema.run_write's argument shape, params redacted).
Then, each in a fresh subprocess so one measurement cannot inherit the other's heap:

* replay: `AuditStore(dsn, spool_dir=...).replay_spool()` into a scratch audit database on
  the configured PostgreSQL (schema applied first); peak RSS growth is VmHWM after the
  replay minus VmRSS before it, plus rows, seconds and rows/s.
* baseline: the approach replay used before issue 10 (read every file whole, parse every
  line, sort them all), on a copy of the same spool, without a database; same measure.

Issue 10's bar: replaying a 100 MiB spool grows RSS by less than 50 MiB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.pipeline import admin_dsn
from remediation.audit.schema import new_id
from remediation.audit.spool import ACTIVE
from remediation.audit.store import AuditStore
from remediation.redact import redact
from tests.support.base import ROOT
from tests.support.services import as_url, scratch_database

SPOOL_MB = int(os.environ.get("REMEDIATION_BENCH_SPOOL_MB", "100"))
FILES = 4
BAR_MIB = 50

# growth = peak RSS (VmHWM) after the work minus current RSS (VmRSS) before it
_HWM = """
def mib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
"""

REPLAY = (
    _HWM
    + """
import json, sys, time
from remediation.audit.store import AuditStore
store = AuditStore(sys.argv[1], spool_dir=sys.argv[2])
before = mib("VmRSS")
start = time.perf_counter()
rows = store.replay_spool(wait=60)
seconds = time.perf_counter() - start
print(json.dumps({"rows": rows, "seconds": seconds, "growth_mib": mib("VmHWM") - before}))
"""
)

WHOLE = (
    _HWM
    + """
import json, os, sys, time
before = mib("VmRSS")
start = time.perf_counter()
lines = []
for name in sorted(os.listdir(sys.argv[1])):
    data = open(os.path.join(sys.argv[1], name), "rb").read()
    for number, raw in enumerate(data.splitlines(keepends=True)):
        record = json.loads(raw)
        lines.append((int(record["ts"]), name, number, raw, record))
lines.sort(key=lambda ln: (ln[0], ln[1], ln[2]))
seconds = time.perf_counter() - start
print(json.dumps({"rows": len(lines), "seconds": seconds, "growth_mib": mib("VmHWM") - before}))
"""
)


def _record(n: int, ts: int, at: datetime) -> dict[str, Any]:
    """One spooled check_run line as AuditStore.start_check_run + Spool.append write it."""
    params = {
        "min_dead_ratio": 0.2,
        "min_dead_rows": 1000,
        "schemas": ["public", "billing"],
        "exclude": [f"audit_log_{n % 12:02d}"],
        "target": "app",
    }
    args = {
        "id": new_id(),
        "task_id": f"c0ffee{n:08x}-5b1c-4f0e-9a3e-6d2f1c9e{n % 9999:04d}",
        "check": "postgres_dead_tuples",
        "target": ("app", "reports", "billing")[n % 3],
        "purpose": "detect",
        "params": redact(params),
        "at": at.isoformat(),
    }
    return {"ts": ts, "op": "check_run", "args": args}


def build(folder: Path, mib: int) -> int:
    """Write about mib MiB of spool into folder (FILES files); returns the record count."""
    folder.mkdir(mode=0o700)
    handles = [open(folder / f"bench-host-{1000 + i}{ACTIVE}", "wb") for i in range(FILES)]
    start, written, n = datetime.now(UTC), 0, 0
    try:
        while written < mib * 1024 * 1024:
            at = start + timedelta(microseconds=n)
            line = json.dumps(_record(n, 1_700_000_000_000_000_000 + n, at), separators=(",", ":"))
            data = line.encode() + b"\n"
            handles[n % FILES].write(data)
            written += len(data)
            n += 1
    finally:
        for fh in handles:
            fh.close()
    return n


def _child(code: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = round(result["rows"] / result["seconds"]) if result["seconds"] else None
    result["seconds"] = round(result["seconds"], 2)
    result["growth_mib"] = round(result["growth_mib"], 1)
    return result


def run() -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="rem-bench-spool-"))
    try:
        spool, copy = root / "spool", root / "copy"
        records = build(spool, SPOOL_MB)
        size = sum(p.stat().st_size for p in spool.iterdir())
        shutil.copytree(spool, copy)
        baseline = _child(WHOLE, str(copy))
        with scratch_database(admin_dsn(), "rem_bench_spool") as dsn:
            AuditStore(dsn).upgrade()
            replay = _child(REPLAY, as_url(dsn), str(spool))
        return {
            "spool_mib": round(size / 1024 / 1024, 1),
            "files": FILES,
            "records": records,
            "replay": replay,
            "baseline_read_whole": baseline,
            "bar_growth_mib": BAR_MIB,
            "meets_bar": replay["growth_mib"] < BAR_MIB and replay["rows"] == records,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
