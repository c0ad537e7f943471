"""HTTP doubles on 127.0.0.1: a webhook receiver, an origin that answers per proxy, and
real proxy processes (tinyproxy, proxy.py) in front of it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.base import free_port, listening, wait_for


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:

                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0KEN/secret-path"

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Behaviour:
    """How the origin answers requests relayed by one proxy."""

    status: int = 200
    delay: float = 0.0
    body: bytes = b"<html>price: 10.00</html>"
    ban_after: int | None = None  # answer 403 once this many requests were served


class Origin:
    """A real HTTP server on 127.0.0.1 answering per proxy; counts requests and concurrency."""

    def __init__(self) -> None:
        self.behaviour: dict[str, Behaviour] = {}
        self.counts: Counter[str] = Counter()
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                via = self.headers.get("Via", "")
                name = self.headers.get("X-Proxy") or ("proxy.py" if "proxy.py" in via else "-")
                with origin.lock:
                    origin.counts[name] += 1
                    served = origin.counts[name]
                    origin.inflight += 1
                    origin.max_inflight = max(origin.max_inflight, origin.inflight)
                b = origin.behaviour.get(name, Behaviour())
                # In flight while it thinks: once the answer is on its way the client may send
                # its next request before this thread runs again (max_inflight counted 3 of 2).
                try:
                    time.sleep(b.delay)
                finally:
                    with origin.lock:
                        origin.inflight -= 1
                try:
                    self._answer(b, served)
                except OSError:
                    pass  # the client gave up (timeout test)

            def _answer(self, b: Behaviour, served: int) -> None:
                banned = b.ban_after is not None and served > b.ban_after
                self.send_response(403 if banned else b.status)
                self.send_header("Content-Length", str(len(b.body)))
                self.end_headers()
                self.wfile.write(b.body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, *args: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/product/42"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ProxyProcess:
    """A real HTTP proxy process on a free loopback port: tinyproxy or proxy.py."""

    name: str
    dir: Path
    auth: tuple[str, str] | None = None
    kind: str = "tinyproxy"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, password: str | None = None) -> str:
        if self.auth is None:
            return f"http://127.0.0.1:{self.port}"
        return f"http://{self.auth[0]}:{password or self.auth[1]}@127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "proxy.py":
            data = self.dir / f"{self.name}-data"
            flags = "--hostname 127.0.0.1 --num-workers 1 --num-acceptors 1 --log-level e".split()
            flags += ["--timeout", "5", "--port", str(self.port), "--data-dir", str(data)]
            return [sys.executable, "-m", "proxy", *flags]
        conf = self.dir / f"{self.name}.conf"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Allow 127.0.0.1",
            "Timeout 5",
            "MaxClients 64",
            "DisableViaHeader Yes",
            f'AddHeader "X-Proxy" "{self.name}"',
            "LogLevel Critical",
            f'PidFile "{self.dir / self.name}.pid"',
        ]
        if self.auth:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        conf.write_text("\n".join(lines) + "\n")
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        return [binary, "-d", "-c", str(conf)]

    def start(self) -> ProxyProcess:
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        proc = self.proc
        wait_for(
            lambda: listening(self.port) or proc.poll() is not None,
            10,
            0.02,
            f"{self.kind} {self.name} on {self.port}",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"{self.kind} {self.name} exited with {proc.returncode}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
