"""Run a configured command (an argv list, never a shell) within a deadline, in a process
group of its own that is killed whole on timeout, with its output kept bounded and redacted.

The child's environment is built here, not inherited: the worker's REMEDIATION_* settings
(DSNs, keys, tokens) never reach it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass

from remediation.redact import redact_text

CHILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSED_THROUGH = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)
"""Variables of the worker a child may see (locale, home, proxies, CA bundles); nothing else."""
KILL_GRACE_SECONDS = 5.0
"""After SIGTERM to the group on timeout, how long before SIGKILL."""


@dataclass(frozen=True)
class Ran:
    """How a command ended: its exit code (None when killed at the deadline), its output
    (stdout and stderr together, cut to the limit, redacted) and how long it took."""

    argv0: str
    code: int | None
    output: str
    seconds: float
    timed_out: bool = False
    cut: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH, the passed-through variables the worker has, and ``extra``."""
    env = {"PATH": CHILD_PATH}
    env.update({k: os.environ[k] for k in PASSED_THROUGH if k in os.environ})
    env.update(extra or {})
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group, SIGKILL to what is left after the grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            if sig == signal.SIGTERM:  # the leader is gone; its group may not be
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def _bounded_text(raw: bytes, limit: int) -> tuple[str, bool]:
    """Head and tail of the output when it is longer than ``limit`` bytes."""
    if len(raw) <= limit:
        return redact_text(raw.decode(errors="replace")), False
    half = limit // 2
    text = raw[:half].decode(errors="replace") + "\n...\n" + raw[-half:].decode(errors="replace")
    return redact_text(text), True


def run_bounded(
    argv: list[str],
    timeout: float,
    *,
    output_limit: int = 8192,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Ran:
    """Run argv to its end or to ``timeout`` seconds, whichever comes first. Output goes to
    a temporary file (no pipe to drain); at most ``output_limit`` bytes are kept, head and
    tail. OSError when the program cannot be started."""
    if not argv:
        raise ValueError("empty command")
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else child_env(),
            cwd=cwd,
            start_new_session=True,  # its own process group: killed whole on timeout
            close_fds=True,
        )
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:  # the task's own time limit: never leave the command behind
            _kill_group(proc)
            raise
        size = out.seek(0, os.SEEK_END)
        out.seek(0)
        if size <= 2 * output_limit:
            raw = out.read()
        else:
            head = out.read(output_limit)
            out.seek(size - output_limit)
            raw = head + out.read()
    text, cut = _bounded_text(raw, output_limit)
    return Ran(
        argv0=os.path.basename(argv[0]),
        code=None if timed_out else proc.returncode,
        output=text,
        seconds=round(time.monotonic() - started, 3),
        timed_out=timed_out,
        cut=cut,
    )
