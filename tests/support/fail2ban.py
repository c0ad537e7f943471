"""Debian's fail2ban as a private server: its own configuration folder, socket, pidfile and
log, a database in memory, one jail on a given access log whose action adds the address
to an nftables set of its own (``inet f2b banned``) inside a network namespace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.base import wait_for
from tests.support.env import missing

TABLE, SET = "f2b", "banned"
JAIL = "remtest"


def fail2ban_server() -> str:
    """The fail2ban-server command, or skip (fail in CI) when fail2ban is not installed."""
    exe = shutil.which("fail2ban-server") or "/usr/bin/fail2ban-server"
    if not os.path.exists(exe):
        missing("fail2ban (fail2ban-server)")
    return exe


def pyinotify_backend() -> bool:
    """Debian's python3 (the one fail2ban runs under) can import pyinotify."""
    done = subprocess.run(
        ["/usr/bin/python3", "-c", "import pyinotify"], capture_output=True, timeout=30
    )
    return done.returncode == 0


@dataclass
class Fail2ban:
    folder: Path
    log: Path
    failregex: str
    maxretry: int
    findtime: int
    bantime: int
    nft_prefix: list[str]
    """The command prefix that runs nft where the bans go (["ip", "netns", "exec", NS])."""
    backend: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.backend:
            self.backend = "pyinotify" if pyinotify_backend() else "polling"

    @property
    def socket(self) -> Path:
        return self.folder / "f2b.sock"

    @property
    def log_path(self) -> Path:
        return self.folder / "fail2ban.log"

    def write_config(self) -> None:
        conf = self.folder / "conf"
        for sub in ("filter.d", "action.d", "jail.d", "fail2ban.d"):
            (conf / sub).mkdir(parents=True, exist_ok=True)
        (conf / "fail2ban.conf").write_text(
            "[Definition]\nloglevel = INFO\n"
            f"logtarget = {self.log_path}\nsocket = {self.socket}\n"
            f"pidfile = {self.folder / 'f2b.pid'}\ndbfile = :memory:\n"
        )
        regex = self.failregex.replace("%", "%%")
        if regex.endswith(" "):  # the configuration reader strips a trailing space
            regex = regex[:-1] + "[ ]"
        (conf / "filter.d" / f"{JAIL}.conf").write_text(
            f"[Definition]\nfailregex = {regex}\nignoreregex =\n"
        )
        nft = " ".join([*self.nft_prefix, "nft"])
        (conf / "action.d" / f"{JAIL}.conf").write_text(
            "[Definition]\nactionstart =\nactionstop =\nactioncheck =\n"
            f"actionban = {nft} add element inet {TABLE} {SET} {{ <ip> }}\n"
            f"actionunban = {nft} delete element inet {TABLE} {SET} {{ <ip> }}\n"
        )
        (conf / "jail.conf").write_text(
            f"[{JAIL}]\nenabled = true\nfilter = {JAIL}\naction = {JAIL}\n"
            f"logpath = {self.log}\nbackend = {self.backend}\n"
            f"maxretry = {self.maxretry}\nfindtime = {self.findtime}\n"
            f"bantime = {self.bantime}\nusedns = no\nignoreip = 127.0.0.1/8 ::1\n"
        )

    def make_set(self) -> None:
        """The table and set the action adds to (fail2ban's own, beside ours)."""
        rules = (
            f"table inet {TABLE} {{\n set {SET} {{ type ipv4_addr; }}\n"
            f" chain input {{ type filter hook input priority -20; ip saddr @{SET} drop; }}\n}}\n"
        )
        subprocess.run(
            [*self.nft_prefix, "nft", "-f", "-"],
            input=rules.encode(),
            check=True,
            capture_output=True,
            timeout=10,
        )

    def start(self) -> Fail2ban:
        exe = fail2ban_server()
        self.write_config()
        self.make_set()
        self.proc = subprocess.Popen(
            [
                exe,
                "-f",
                "-x",
                "-c",
                str(self.folder / "conf"),
                "-s",
                str(self.socket),
                "-p",
                str(self.folder / "f2b.pid"),
                "--logtarget",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._started, 60, 0.1, "fail2ban's jail started")
        return self

    def _started(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"fail2ban-server exited:\n{self.text()[-3000:]}")
        return f"Jail '{JAIL}' started" in self.text()

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
