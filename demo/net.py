"""The miniature's network: a target shop (the origin) and a pool of forward HTTP proxies,
pure Python on 127.0.0.1 random ports, each in a thread of the demo process. A proxy can
be banned: it then answers 403 to everything, as a site's ban looks through a proxy."""

from __future__ import annotations

import random
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlsplit

FETCH_TIMEOUT = 3.0
"""Seconds a proxy waits for the origin."""


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, code: int, body: bytes, ctype: str = "text/html") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Shop(_Quiet):
    """/product/<n>: a product page with a price; anything else 404."""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/" or path.startswith("/product/"):
            price = f"{random.uniform(10, 100):.2f}"  # noqa: S311 (not security)
            self._answer(200, f'<html><span class="price">{price}</span></html>'.encode())
        else:
            self._answer(404, b"not found")


class _Proxy(_Quiet):
    """A forward proxy (absolute-URI GET) to the shop only; 403 while banned."""

    server: ProxyServer

    def do_GET(self) -> None:
        if self.server.banned:
            self._answer(403, b"<html>403 Forbidden: your IP is banned</html>")
            return
        parts = urlsplit(self.path)
        if parts.scheme != "http" or parts.netloc != self.server.origin:
            self._answer(403, b"this proxy only reaches the demo shop")
            return
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.path, timeout=FETCH_TIMEOUT) as resp:
                self._answer(resp.status, resp.read(65536))
        except urllib.error.HTTPError as exc:
            self._answer(exc.code, b"")
        except OSError:
            self._answer(502, b"bad gateway")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.shutdown()
        self.server_close()


class ShopServer(_Server):
    def __init__(self) -> None:
        super().__init__(_Shop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


class ProxyServer(_Server):
    def __init__(self, origin: str) -> None:
        super().__init__(_Proxy)
        self.origin = origin
        self.banned = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
