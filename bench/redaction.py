"""Every redaction pattern on hostile input: time per MB at 128 KB, 512 KB and 1 MB.

Each pattern gets the inputs that make a backtracking engine (Python's re) go quadratic:
long runs of the pattern's own prefixes that never complete a match (a quote followed by
secret words and no closing quote; a scheme and ':' repeated with no '@'; secret words
followed by spaces and no '='; 'Bearer' and spaces). Linear time shows as a flat time per
MB across the three sizes.

Baselines in the same run: `grep -E -c` (GNU grep's DFA, linear) with the same pattern on
the same bytes, and, for contrast, the Python `re` pattern issue 10 reported (quoted
secrets), timed at sizes it can still finish.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from remediation.redact import PATTERNS, redact_text

SIZES = (128 * 1024, 512 * 1024, 1024 * 1024)
REPEAT = 3


def _fill(unit: str, size: int, head: str = "") -> str:
    body = unit * ((size - len(head)) // len(unit) + 1)
    return (head + body)[:size]


# pattern name -> hostile inputs (name -> size -> text)
HOSTILE: dict[str, dict[str, Callable[[int], str]]] = {
    "url_password": {
        "scheme then ':' run": lambda n: _fill(":", n, "a://"),
        "scheme then 'x:' run": lambda n: _fill("x:", n, "a://"),
        "schemes repeated": lambda n: _fill("!a://x:y", n),
    },
    "key_value": {
        "word then spaces": lambda n: _fill(" ", n, "password"),
        "words repeated": lambda n: _fill("xpassword", n),
        "unclosed quote": lambda n: _fill("'", n, "password="),
    },
    "quoted": {
        "quote then words": lambda n: _fill("password", n, "'"),
        "quoted keys repeated": lambda n: _fill("'password' ", n),
        "key then unclosed value": lambda n: _fill('"', n, "'password': "),
    },
    "auth_header": {
        "Bearer then spaces": lambda n: _fill(" ", n, "Bearer"),
        "Bearer repeated": lambda n: _fill("Bearer ", n),
        "short tokens": lambda n: _fill("Token abcde ", n),
    },
}

# The pattern issue 10 reproduced at 7.6 s for 128 KB (Python re, before RE2).
OLD_QUOTED = re.compile(
    r"(?P<key>[\"']\w*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)\w*[\"']"
    r"\s*:\s*)(?P<val>\"[^\"]*\"|'[^']*')",
    re.IGNORECASE,
)


def _best(fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _posix(pattern: str) -> tuple[str, bool]:
    """The RE2 pattern as POSIX ERE for grep -E: the same alternatives, without group names,
    with \\s as [:space:] and escaped '-' moved to the end of its bracket."""
    text = re.sub(r"\(\?P<\w+>", "(", pattern).replace("(?:", "(")
    insensitive = text.startswith("(?i)")
    text = text.removeprefix("(?i)").replace(r"\b", r"\<")
    out, bracket, dash, i = [], False, False, 0
    while i < len(text):
        pair = text[i : i + 2]
        if bracket and pair == r"\s":
            out.append("[:space:]")
        elif bracket and pair == r"\-":
            dash = True
        elif bracket and pair == '\\"':
            out.append('"')
        elif not bracket and pair == r"\s":
            out.append("[[:space:]]")
        elif text[i] == "[" and not bracket:
            bracket, dash = True, False
            out.append(text[i : i + 2] if pair == "[^" else "[")
            i += len(out[-1])
            continue
        elif text[i] == "]" and bracket and out[-1] not in ("[", "[^"):
            bracket = False
            out.append("-]" if dash else "]")
            i += 1
            continue
        else:
            out.append(text[i])
            i += 1
            continue
        i += 2
    return "".join(out), insensitive


def _grep(pattern: str, path: Path) -> float | None:
    grep = shutil.which("grep")
    if grep is None:
        return None
    text, insensitive = _posix(pattern)
    argv = [grep, "-E", "-c", *(["-i"] if insensitive else []), "-e", text, str(path)]
    return _best(lambda: subprocess.run(argv, capture_output=True, check=False))


def run() -> dict[str, Any]:
    results: dict[str, Any] = {"sizes_bytes": list(SIZES), "patterns": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, inputs in HOSTILE.items():
            pattern = PATTERNS[name]
            rows = {}
            for label, make in inputs.items():
                per_mb = []
                for size in SIZES:
                    text = make(size)
                    seconds = _best(lambda text=text, p=pattern: p.sub("", text))
                    per_mb.append(round(seconds / (size / 2**20), 5))
                whole = _best(lambda text=text: redact_text(text))
                path = Path(tmp) / "input.txt"
                path.write_text(text)
                grep = _grep(pattern.pattern, path)
                rows[label] = {
                    "seconds_per_mb": per_mb,
                    "flatness_1mb_vs_128kb": round(per_mb[-1] / per_mb[0], 2)
                    if per_mb[0]
                    else None,
                    "redact_text_1mb_s": round(whole, 5),
                    "grep_E_1mb_s": None if grep is None else round(grep, 5),
                }
            results["patterns"][name] = rows
    old = {}
    for size in (16 * 1024, 32 * 1024, 64 * 1024):
        text = _fill("password", size, "'")
        old[f"{size // 1024}KB"] = round(_best(lambda text=text: OLD_QUOTED.sub("", text)), 4)
    results["old_python_re_quoted_seconds"] = old
    results["median_seconds_per_mb"] = statistics.median(
        v
        for rows in results["patterns"].values()
        for r in rows.values()
        for v in r["seconds_per_mb"]
    )
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
