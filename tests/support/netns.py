"""Two network namespaces joined by a veth pair, a tiny HTTP server in one of them, and a way
to ask it for a page from the other: the hosts of the ban tests. Everything is removed at the
end, whatever happens; the root namespace's nftables ruleset is never touched."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.support.env import missing

_SEQ = itertools.count()
PORT = 8213


def need_root_and_nft() -> None:
    """Skip (fail in CI) unless this process is root and nft and ip are installed."""
    if os.geteuid() != 0:
        missing("root (network namespaces and nftables)")
    for tool in ("nft", "ip"):
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            missing(f"the {tool} command")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Hosts:
    """A server and a client namespace, 10.213.<n>.1 and .2 on one /24."""

    server: str
    client: str
    server_ip: str
    client_ip: str
    http: subprocess.Popen[bytes] | None = None

    def in_server(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.server, *argv]

    def get(self, timeout: float = 1.0) -> int | None:
        """The status of GET / from the client namespace, None when nothing answers."""
        code = (
            "import sys, urllib.request\n"
            f"try: print(urllib.request.urlopen('http://{self.server_ip}:{PORT}/',"
            f" timeout={timeout}).status)\n"
            "except Exception: print('none')\n"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", self.client, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout + 20,
            check=False,
        ).stdout.strip()
        return int(out) if out.isdigit() else None

    def nft(self, *args: str) -> str:
        return subprocess.run(
            self.in_server("nft", *args), capture_output=True, text=True, timeout=10, check=True
        ).stdout


@contextmanager
def two_hosts(tmp: str) -> Iterator[Hosts]:
    """The namespaces, their link and the HTTP server in the server namespace."""
    need_root_and_nft()
    n = (os.getpid() + next(_SEQ)) % 250 + 1
    tag = f"{os.getpid() % 100000}{next(_SEQ)}"
    hosts = Hosts(f"r213s{tag}", f"r213c{tag}", f"10.213.{n}.1", f"10.213.{n}.2")
    made: list[str] = []
    try:
        for ns in (hosts.server, hosts.client):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "link",
            "add",
            f"v{tag}s",
            "netns",
            hosts.server,
            "type",
            "veth",
            "peer",
            "name",
            f"v{tag}c",
            "netns",
            hosts.client,
        )
        for ns, dev, addr in (
            (hosts.server, f"v{tag}s", hosts.server_ip),
            (hosts.client, f"v{tag}c", hosts.client_ip),
        ):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        hosts.http = subprocess.Popen(
            hosts.in_server(
                sys.executable, "-m", "http.server", str(PORT), "--bind", hosts.server_ip
            ),
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while hosts.get(0.5) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP server in the server namespace did not answer")
            time.sleep(0.1)
        yield hosts
    finally:
        if hosts.http is not None:
            hosts.http.kill()
            hosts.http.wait(10)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
