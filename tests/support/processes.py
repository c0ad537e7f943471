"""Real service processes for the tests: Celery workers and beats of this checkout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tests.support.base import ROOT, wait_for


@dataclass
class WorkerProcess:
    """A real `celery -A remediation worker` process with its own environment and log file."""

    env: dict[str, str]
    name: str
    concurrency: int = 2
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))
    extra_args: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)
    """Run under this command, e.g. ``["ip", "netns", "exec", NS]`` (another host)."""
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> WorkerProcess:
        celery = str(Path(_venv_bin()) / "celery")
        cmd = [*self.prefix, celery, "-A", "remediation", "worker", "-n", f"{self.name}@%h"]
        cmd += ["-c", str(self.concurrency), "--loglevel", "INFO"]
        cmd += ["--without-gossip", "--without-mingle", *self.extra_args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(
                lambda: self.ready() or self._died(), timeout, 0.2, f"worker {self.name} ready"
            )
        except TimeoutError:
            self.stop()  # never leave a half-started worker behind
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.log()[-3000:]}")
        return self

    def ready(self) -> bool:
        return " ready." in self.log()

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, text: str) -> list[tuple[str, float]]:
        """(event, epoch) of the JSON log lines whose event contains text."""
        return json_events(self.log(), text)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


REDBEAT_LOCK_KEY = "rem:redbeat::lock"
"""The key the active beat holds (celery_app's redbeat_key_prefix + redbeat's ":lock")."""


@dataclass
class BeatProcess:
    """A real `celery -A remediation beat` process (redbeat): the first to take the lock in
    Redis is active, the others wait as standbys until the lock expires."""

    env: dict[str, str]
    name: str
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))
    prefix: list[str] = field(default_factory=list)
    """Run under this command, e.g. ``["ip", "netns", "exec", NS]`` (another host)."""
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        celery = str(Path(_venv_bin()) / "celery")
        cmd = [*self.prefix, celery, *"-A remediation beat --loglevel INFO".split()]
        return [*cmd, "-s", str(self.log_path.with_suffix(".schedule"))]

    def start(self) -> BeatProcess:
        """Start it without waiting: a standby says nothing until it becomes active."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self, text: str) -> list[tuple[str, float]]:
        """(event, epoch) of the JSON log lines whose event contains text."""
        return json_events(self.log(), text)

    def active(self) -> bool:
        """Alive and holding the redbeat lock (redbeat logs when it acquires it)."""
        return self.alive() and "beat: Acquired lock" in self.log()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group and wait for it (SIGKILL: no lock release)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@dataclass
class WatchProcess(BeatProcess):
    """A real `remediation watch` process (its id is its name): the first to take a source's
    lease listens to it, the others wait as standbys (start, log, kill as BeatProcess)."""

    sources: list[str] = field(default_factory=list)
    """--source arguments; none: every configured source."""

    def command(self) -> list[str]:
        cmd = [*self.prefix, str(Path(_venv_bin()) / "remediation"), "watch", "--id", self.name]
        return cmd + [arg for s in self.sources for arg in ("--source", s)]

    def active(self, source: str | None = None) -> bool:
        """Alive and listening (to source): it logged taking the lease."""
        taken = [e for e in self.log().splitlines() if "lease taken" in e]
        return self.alive() and any(source is None or f'"{source}"' in e for e in taken)


def json_events(log: str, text: str) -> list[tuple[str, float]]:
    """(event, epoch) of the JSON lines of a log whose event contains text."""
    found = []
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and text in str(event.get("event", "")):
            at = datetime.fromisoformat(event["timestamp"]).timestamp()
            found.append((str(event["event"]), at))
    return found


def _venv_bin() -> str:
    return str(Path(sys.executable).parent)


class Beat:
    """A `celery -A remediation beat` at DEBUG level, started at once, with no schedule file
    option (the integration tests' beat; BeatProcess is the chaos tests')."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        celery = str(Path(sys.executable).parent / "celery")
        self.proc = subprocess.Popen(
            [celery, "-A", "remediation", "beat", "--loglevel", "DEBUG"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(20)
        self._log.close()
