"""The log_secrets scan vs `grep -E` with the same patterns, on the same generated logs.

Generates REMEDIATION_BENCH_SECRETS_MB (200) MB of realistic log lines (orders, HTTP access,
JSON events, debug key=value lines, with near-misses: account-like numbers, "fa" words,
short tokens) in four files, with PLANTED secret lines spread through them. Then, in the
same run, page cache warm, each REPEAT times:

* the scan as the check runs it: remediation.security.log_scan.scan_file over each file with
  a fresh state (fakeredis: the state calls are O(1) per file), budget = the whole file;
* `LC_ALL=C grep -E -c -e P1 ... -e P10` over the same files with every built-in pattern
  written as POSIX ERE (ERE_PATTERNS below).

Reported: MB/s of both (median run), the ratio, and the count of matching lines of each
(the comparison is honest only if they agree).

What ERE cannot say, and how it is handled: RE2's scoped case-insensitivity `(?i:...)` has
no ERE form (grep -i is all or nothing), so those letters are written as classes ([fF][aA]);
named groups become plain groups. The `secret` group (what is masked) and the rule that a
span already masked ('*' only) is no secret have no grep counterpart: grep only selects
lines. The generated logs hold no masked spans, so the counts are comparable.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import fakeredis

from remediation.security import log_patterns, log_scan

MB = 1 << 20
FILES = 4
PLANTED = 40
REPEAT = 3
_T = "[ \t]"


def _ci(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


_WORDS = (
    "("
    + "|".join(
        _ci(w)
        for w in ("password", "passwd", "pwd", "secret", "token", "api[_-]?key", "access[_-]?key")
    )
    + ")"
)
ERE_PATTERNS: dict[str, str] = {
    "ibkr_fa_field": rf"\b{_ci('fa')}{_T}*[=:]{_T}*[\"']?[A-Za-z0-9_-]{{2,64}}",
    "ibkr_account": r"\b(DU|DF|U|F)[0-9]{6,8}\b",
    "aws_access_key": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "github_token": r"\b(gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,240})",
    "slack_token": r"\bxox[abposr]-[A-Za-z0-9-]{10,240}",
    "stripe_key": r"\b(sk|rk)_live_[A-Za-z0-9]{16,240}",
    "private_key": r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----",
    "bearer_token": rf"\b(Bearer|Basic|Token){_T}+[A-Za-z0-9._~+/=-]{{6,}}",
    "url_password": r"[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^:/@[:space:]]*:[^[:space:]]*@",
    "generic_secret": (
        rf"\b[a-zA-Z0-9_]*{_WORDS}[a-zA-Z0-9_]*[\"']?{_T}*[=:]{_T}*[\"']?[^[:space:]&,;'\"}}]{{8,}}"
    ),
}
"""Every built-in pattern of remediation.security.log_patterns, as POSIX ERE."""

SECRET_LINES = (
    "INFO ibkr allocation fa=F{n:07d} group=growth\n",
    "DEBUG account U{n:07d} synced\n",
    "DEBUG boto credentials AKIA{k:016d}\n",
    "WARN github push with ghp_{k:036d}\n",
    "INFO connecting postgresql://bot:pw{n}secret@db:5432/app\n",
    "DEBUG outgoing Authorization: Bearer eyJ{k}.payload\n",
    "INFO config api_key=sk{k:020d}\n",
    "DEBUG slack xoxb-{k:012d}-abc\n",
)


def _normal(rng: random.Random, i: int) -> str:
    kind = i % 5
    if kind == 0:
        return (
            f"2026-11-28T01:{i % 60:02d}:{i % 59:02d}Z INFO order filled symbol=AAPL "
            f"qty={rng.randint(1, 500)} price={rng.uniform(10, 900):.2f} order_id={i} took=12ms\n"
        )
    if kind == 1:
        return (
            f'10.0.{i % 250}.{i % 200} - - [28/Nov/2026:01:00:{i % 60:02d} +0000] "GET /api/v2/'
            f'quotes?symbol=MSFT&page={i % 40} HTTP/1.1" {rng.choice((200, 200, 304, 404))} '
            f'{rng.randint(200, 9000)} "-" "python-requests/2.32"\n'
        )
    if kind == 2:
        return (
            f'{{"ts": "2026-11-28T01:00:00Z", "level": "info", "event": "position update", '
            f'"fa_group": "growth", "positions": {rng.randint(1, 90)}, "max_tokens": 512}}\n'
        )
    if kind == 3:  # near misses: account-like numbers, short tokens, "fa" words
        return (
            f"DEBUG fast path cache=hit key=U{rng.randint(10, 99999)} failover=false "
            f"token_count={rng.randint(1, 900)} fa_enabled=1\n"
        )
    return f"WARN retry {i % 7} of 5 for https://api.example.com/v1/orders status=429\n"


def generate(folder: Path, total_mb: int) -> tuple[list[Path], int]:
    """FILES files of realistic lines, PLANTED secret lines spread through them; returns the
    files and the number of secret lines planted."""
    rng = random.Random(13)
    per_file = total_mb * MB // FILES
    plants = sorted(rng.sample(range(total_mb * MB // 120), PLANTED))
    files, line_no, planted = [], 0, 0
    for f in range(FILES):
        path = folder / f"app{f}.log"
        with open(path, "w", encoding="ascii") as fh:
            size, batch = 0, []
            while size < per_file:
                if planted < len(plants) and line_no >= plants[planted]:
                    k = rng.randint(10**9, 10**10)
                    line = SECRET_LINES[planted % len(SECRET_LINES)].format(n=1000 + planted, k=k)
                    planted += 1
                else:
                    line = _normal(rng, line_no)
                batch.append(line)
                size += len(line)
                line_no += 1
                if len(batch) >= 10_000:
                    fh.write("".join(batch))
                    batch.clear()
            fh.write("".join(batch))
        files.append(path)
    return files, planted


def _scan(files: list[Path]) -> tuple[float, int]:
    state = fakeredis.FakeRedis()
    pset = log_patterns.pattern_set({})
    started = time.perf_counter()
    lines = 0
    for path in files:
        size = path.stat().st_size
        result = log_scan.scan_file(state, pset, str(path), size + 1, 64 << 10, 3600)
        lines += len(result.new)
    return time.perf_counter() - started, lines


def _grep(files: list[Path]) -> tuple[float, int] | None:
    grep = shutil.which("grep")
    if grep is None:
        return None
    argv = [grep, "-E", "-c", "-h"]
    for ere in ERE_PATTERNS.values():
        argv += ["-e", ere]
    started = time.perf_counter()
    out = subprocess.run(
        [*argv, *map(str, files)],
        capture_output=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    elapsed = time.perf_counter() - started
    return elapsed, sum(int(n) for n in out.stdout.split())


def run() -> dict[str, Any]:
    total_mb = int(os.environ.get("REMEDIATION_BENCH_SECRETS_MB", "200"))
    assert set(ERE_PATTERNS) == set(log_patterns.BUILTIN)
    with tempfile.TemporaryDirectory(prefix="bench-secrets-") as tmp:
        files, planted = generate(Path(tmp), total_mb)
        size = sum(p.stat().st_size for p in files)
        for p in files:  # page cache warm for both
            p.read_bytes()
        ours, theirs, counts = [], [], {"scan": 0, "grep": 0}
        for _ in range(REPEAT):
            seconds, counts["scan"] = _scan(files)
            ours.append(seconds)
            g = _grep(files)
            if g is not None:
                theirs.append(g[0])
                counts["grep"] = g[1]
    scan_mb_s = size / MB / statistics.median(ours)
    grep_mb_s = size / MB / statistics.median(theirs) if theirs else None
    return {
        "bytes": size,
        "files": FILES,
        "planted_secret_lines": planted,
        "matching_lines": counts,
        "counts_agree": counts["scan"] == counts["grep"],
        "scan_mb_s": round(scan_mb_s, 1),
        "grep_E_mb_s": None if grep_mb_s is None else round(grep_mb_s, 1),
        "ratio_scan_over_grep": None if grep_mb_s is None else round(scan_mb_s / grep_mb_s, 3),
        "runs": REPEAT,
    }
