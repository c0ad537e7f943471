"""A web server that refuses logins and says so in a real access log, the clients that try,
and a watch on the nftables sets that ban them (the log-tail race against fail2ban).

* ``python -m tests.support.access_server PORT BIND LOG TIMES`` (run inside the server's
  namespace): GET / is 200, anything else 401; after each answer one combined-format line
  is appended to LOG (O_APPEND, one write per line, as nginx does), then ``ip epoch status``
  to TIMES: when that line was written, by this server's clock;
* :func:`add_clients`: more source addresses on the client namespace's veth, so every round
  has an offender nobody has seen; :func:`offend`: n refused logins from one of them;
* :class:`BanWatch`: polls ``nft -j list ruleset`` in the server namespace and records when
  each address first shows in each set (one listing for all sets: the same for everyone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.base import ROOT, wait_for
from tests.support.netns import Hosts

PORT = 8214
REQUEST = "POST /login HTTP/1.1"


# --- the server (in the server namespace) ---------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    log_fd = -1
    times_fd = -1
    lock = threading.Lock()

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/" else 401)

    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), 4096)
        self.rfile.read(length)
        self._answer(401)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.wfile.flush()
        ip = self.client_address[0]
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
        request = REQUEST if status == 401 else "GET / HTTP/1.1"
        line = f'{ip} - - [{stamp}] "{request}" {status} 0 "-" "offender"\n'
        with self.lock:
            os.write(self.log_fd, line.encode())
            written = time.time()
            os.write(self.times_fd, f"{ip} {written:.6f} {status}\n".encode())

    def log_message(self, format: str, *args: object) -> None:
        pass  # the access log above is the only log


def serve(port: int, bind: str, log: str, times: str) -> None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    _Handler.log_fd = os.open(log, flags, 0o644)
    _Handler.times_fd = os.open(times, flags, 0o644)
    ThreadingHTTPServer((bind, port), _Handler).serve_forever()


@dataclass
class AccessServer:
    """The server process and where it writes."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    times: Path

    def written(self, ip: str, status: int = 401) -> list[float]:
        """When each line of ip with that status was written, in order."""
        out = []
        for row in self.times.read_text().splitlines():
            parts = row.split()
            if len(parts) == 3 and parts[0] == ip and parts[2] == str(status):
                out.append(float(parts[1]))
        return out


@contextmanager
def access_server(hosts: Hosts, folder: Path) -> Iterator[AccessServer]:
    """The server in the server namespace, answering on hosts.server_ip:PORT."""
    log, times = folder / "access.log", folder / "written.txt"
    log.write_text("")
    times.write_text("")
    proc = subprocess.Popen(
        [
            *hosts.in_server(sys.executable, "-m", "tests.support.access_server", str(PORT)),
            hosts.server_ip,
            str(log),
            str(times),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = AccessServer(proc, f"http://{hosts.server_ip}:{PORT}/", log, times)
    try:
        wait_for(lambda: _status(hosts, hosts.client_ip, server.url) == 200, 20, 0.1, "server")
        yield server
    finally:
        proc.kill()
        proc.wait(10)


# --- the clients (in the client namespace) --------------------------------------------------

_CLIENT = """
import http.client, sys
host, port, source, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
for _ in range(n):
    try:
        c = http.client.HTTPConnection(host, port, timeout=2, source_address=(source, 0))
        c.request("POST" if path != "/" else "GET", path, body=b"user=x&password=y")
        print(c.getresponse().status)
        c.close()
    except OSError:
        print("none")
"""


def add_clients(hosts: Hosts, count: int) -> list[str]:
    """count more addresses on the client namespace's veth (from .10 of the hosts' /24 on,
    after those added before), all able to reach the server."""
    prefix = hosts.client_ip.rsplit(".", 1)[0]
    dev, taken = _client_dev(hosts)
    first = max([9, *taken]) + 1
    if first + count > 250:
        raise RuntimeError(f"no room for {count} more client addresses in {prefix}.0/24")
    ips = [f"{prefix}.{first + i}" for i in range(count)]
    for ip in ips:
        subprocess.run(
            ["ip", "-n", hosts.client, "addr", "add", f"{ip}/24", "dev", dev],
            check=True,
            capture_output=True,
            timeout=10,
        )
    return ips


def _client_dev(hosts: Hosts) -> tuple[str, list[int]]:
    """The client's veth and the last octets of the addresses it has."""
    out = subprocess.run(
        ["ip", "-n", hosts.client, "-o", "-4", "addr", "show"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    dev, taken = "", []
    for row in out.splitlines():
        parts = row.split()
        if len(parts) > 3 and parts[2] == "inet":
            taken.append(int(parts[3].split("/")[0].rsplit(".", 1)[1]))
            if parts[3].startswith(f"{hosts.client_ip}/"):
                dev = parts[1]
    if dev:
        return dev, taken
    raise RuntimeError(f"no device with {hosts.client_ip} in {hosts.client}")


def _client(hosts: Hosts, source: str, n: int, path: str) -> list[str]:
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            hosts.client,
            sys.executable,
            "-c",
            _CLIENT,
            hosts.server_ip,
            str(PORT),
            source,
            str(n),
            path,
        ],
        capture_output=True,
        text=True,
        timeout=30 + 3 * n,
        check=True,
    )
    return done.stdout.split()


def _status(hosts: Hosts, source: str, url: str) -> int | None:
    got = _client(hosts, source, 1, "/")
    return int(got[0]) if got and got[0].isdigit() else None


def offend(hosts: Hosts, source: str, n: int) -> list[str]:
    """n refused logins (POST /login) from source, one after the other; their statuses."""
    return _client(hosts, source, n, "/login")


# --- the bans -------------------------------------------------------------------------------


@dataclass
class BanWatch:
    """First sight of each address in each set ("table/set"), polled in the server's
    namespace as fast as one ``nft -j list ruleset`` after another goes."""

    hosts: Hosts
    first: dict[tuple[str, str], float] = field(default_factory=dict)
    polls: int = 0
    poll_seconds: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> BanWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def seen(self, where: str, ip: str) -> float | None:
        with self._lock:
            return self.first.get((where, ip))

    def _run(self) -> None:
        cmd = self.hosts.in_server("nft", "-j", "list", "ruleset")
        while not self._stop.is_set():
            started = time.time()
            done = subprocess.run(cmd, capture_output=True, timeout=10, check=False)
            at = time.time()  # the listing is at most this late: an upper bound
            self.poll_seconds.append(at - started)
            if done.returncode == 0:
                self._record(done.stdout, at)
            self.polls += 1

    def _record(self, out: bytes, at: float) -> None:
        try:
            items = json.loads(out).get("nftables", [])
        except ValueError:
            return
        with self._lock:
            for item in items:
                s = item.get("set") if isinstance(item, dict) else None
                if not isinstance(s, dict):
                    continue
                where = f"{s.get('table')}/{s.get('name')}"
                for elem in s.get("elem") or []:
                    ip = _element(elem)
                    if ip is not None:
                        self.first.setdefault((where, ip), at)


def _element(elem: object) -> str | None:
    """An element's address: a plain string, or {"elem": {"val": ..., "timeout": ...}}."""
    if isinstance(elem, str):
        return elem
    if isinstance(elem, dict) and isinstance(elem.get("elem"), dict):
        val = elem["elem"].get("val")
        return val if isinstance(val, str) else None
    return None


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
