"""Hosts as network namespaces made by the tests, removed at the end whatever happens; the
root namespace's nftables ruleset is never touched.

* two_hosts: two namespaces joined by a veth pair, a tiny HTTP server in one of them and a
  way to ask it for a page from the other (the ban tests);
* bridged_hosts: N namespaces, each with a veth to a bridge in the root namespace, whose
  link the test can drop and raise again (the partition test), and a TCP relay on the
  bridge address in front of the test's services on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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


PREFIX = "rem-"
"""Every namespace and link bridged_hosts makes is named rem-<pid>-<part> (at most 15
characters: a Linux interface name), so a later run can tell a crashed run's leftovers
(a pid that no longer runs) from another live run's."""
_OURS = re.compile(r"^rem-(\d+)-(br|h\d+|v\d+)$")


@dataclass
class Host:
    """One namespace: its name, its address on the bridge, and its link's root end."""

    name: str
    ip: str
    link: str  # the veth end in the root namespace, on the bridge
    cut: bool = False

    def prefix(self) -> list[str]:
        """The command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.name]


@dataclass
class Network:
    """A bridge in the root namespace (bridge_ip on a private /24) and hosts behind it."""

    bridge: str
    bridge_ip: str
    hosts: list[Host] = field(default_factory=list)

    def cut(self, host: Host) -> None:
        """Drop the host's link at the bridge: its packets go nowhere and nothing reaches it
        (TCP sees silence, not resets: the namespace keeps its address and route)."""
        _ip("link", "set", host.link, "down")
        host.cut = True

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.link, "up")
        host.cut = False

    def reaches(self, host: Host, port: int, timeout: float = 1.0) -> bool:
        """A TCP connection from the host to bridge_ip:port succeeds."""
        code = (
            "import socket, sys\n"
            f"try: socket.create_connection(({self.bridge_ip!r}, {port}), {timeout}).close()\n"
            "except OSError: sys.exit(1)\n"
        )
        run = subprocess.run(
            [*host.prefix(), sys.executable, "-c", code], capture_output=True, timeout=30
        )
        return run.returncode == 0


def need_root_and_ip() -> None:
    """Skip (fail in CI) unless this process is root and ip is installed."""
    if os.geteuid() != 0:
        missing("root (network namespaces)")
    if not (shutil.which("ip") or os.path.exists("/usr/sbin/ip")):
        missing("the ip command")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Remove the namespaces and links of earlier runs whose process is gone; their names."""
    gone = []
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.split()
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    names += [m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", links, re.M)]
    for name in names:
        match = _OURS.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        kind = "netns" if match.group(2).startswith("h") else "link"
        subprocess.run(["ip", kind, "del", name], capture_output=True, timeout=10, check=False)
        gone.append(name)
    return gone


def free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that overlaps no address or route of this machine."""
    used = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    used += subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    taken = [
        ipaddress.ip_network(m, strict=False)
        for m in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", used)
    ]
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randint(1, 254)}.{rng.randint(1, 254)}.0/24")
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.x.y.0/24 on this machine")


@contextmanager
def bridged_hosts(count: int) -> Iterator[Network]:
    """count namespaces rem-<pid>-h1.. at .11, .12, .. of a free private /24, each with a
    veth to the bridge rem-<pid>-br (at .1) and lo up; all removed afterwards."""
    need_root_and_ip()
    remove_stale()
    tag = f"{PREFIX}{os.getpid()}"
    net = free_subnet(random.Random())
    addr = [str(a) for a in net]
    network = Network(f"{tag}-br", addr[1])
    made: list[tuple[str, str]] = []
    try:
        try:
            _ip("link", "add", network.bridge, "type", "bridge")
        except subprocess.CalledProcessError as exc:  # root without CAP_NET_ADMIN
            missing(f"a bridge of our own ({exc.stderr.decode(errors='replace').strip()})")
        made.append(("link", network.bridge))
        _ip("addr", "add", f"{network.bridge_ip}/24", "dev", network.bridge)
        _ip("link", "set", network.bridge, "up")
        for n in range(1, count + 1):
            host = Host(f"{tag}-h{n}", addr[10 + n], f"{tag}-v{n}")
            _ip("netns", "add", host.name)
            made.append(("netns", host.name))
            _ip("-n", host.name, "link", "set", "lo", "up")
            _ip(
                "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.name
            )
            made.append(("link", host.link))
            _ip("link", "set", host.link, "master", network.bridge)
            _ip("link", "set", host.link, "up")
            _ip("-n", host.name, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.name, "link", "set", "eth0", "up")
            network.hosts.append(host)
        # a bridge takes the lowest MAC of its ports unless given one: fix it, then pin it
        _ip("link", "set", network.bridge, "address", _mac("link", "show", network.bridge))
        for host in network.hosts:
            _pin_neighbours(network, host)
        yield network
    finally:
        for kind, name in reversed(made):
            subprocess.run(["ip", kind, "del", name], capture_output=True, timeout=10, check=False)


def _mac(*where: str) -> str:
    out = subprocess.run(
        ["ip", *where], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return re.search(r"link/ether ([0-9a-f:]{17})", out).group(1)  # type: ignore[union-attr]


def _pin_neighbours(network: Network, host: Host) -> None:
    """Permanent ARP entries both ways: a cut is pure silence (no 'no route to host' after
    failed ARP probes), as a cable pulled between two hosts that talked before."""
    bridge_mac = _mac("link", "show", network.bridge)
    host_mac = _mac("-n", host.name, "link", "show", "eth0")
    pin = ("nud", "permanent", "dev")
    _ip("-n", host.name, "neigh", "replace", network.bridge_ip, "lladdr", bridge_mac, *pin, "eth0")
    _ip("neigh", "replace", host.ip, "lladdr", host_mac, *pin, network.bridge)


class Relay:
    """TCP relays in this process (asyncio, a thread of their own): listen on the bridge
    address, forward to 127.0.0.1. A cut host's connections are left alone, silent, as a
    server whose client lost its network sees them."""

    def __init__(self, listen_ip: str) -> None:
        self.listen_ip = listen_ip
        self.ports: dict[int, int] = {}  # 127.0.0.1 port -> relay port on listen_ip
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def forward(self, port: int) -> int:
        """The relay port on listen_ip for 127.0.0.1:port (made on first use)."""
        if port not in self.ports:
            future = asyncio.run_coroutine_threadsafe(self._serve(port), self._loop)
            self.ports[port] = future.result(10)
        return self.ports[port]

    def rewrite(self, value: str) -> str:
        """value with every 127.0.0.1:PORT / localhost:PORT pointed at the relay."""

        def sub(match: re.Match[str]) -> str:
            return f"{self.listen_ip}:{self.forward(int(match.group(2)))}"

        return re.sub(r"\b(127\.0\.0\.1|localhost):(\d+)", sub, value)

    async def _serve(self, port: int) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            self._writers.update((writer, up_writer))
            await asyncio.gather(
                _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
            )
            self._writers.difference_update((writer, up_writer))

        server = await asyncio.start_server(handle, self.listen_ip, 0)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        async def shut() -> None:
            for server in self._servers:
                server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close (or close) the other side."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        if writer.can_write_eof() and not writer.is_closing():
            try:
                writer.write_eof()
            except OSError:
                writer.close()
        else:
            writer.close()
