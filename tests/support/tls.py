"""A TLS server on 127.0.0.1 that serves whatever certificate is in its files right now
(it reads them again for every connection, as a server reloaded by certbot's deploy hook
would), and certificates made by a private CA (trustme) with chosen dates and names."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme


def issue(ca: trustme.CA, *names: str, days: float, folder: Path, stem: str = "cert") -> Path:
    """A certificate for ``names`` valid until ``days`` from now (negative: expired), written
    as ``stem``.pem (chain, then key) in ``folder``; returns its path."""
    now = datetime.now(UTC)
    not_after = now + timedelta(days=days)
    not_before = min(now - timedelta(days=1), not_after - timedelta(days=1))
    leaf = ca.issue_cert(*names, not_before=not_before, not_after=not_after)
    path = folder / f"{stem}.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


class TlsServer:
    """Accepts on a loopback port; every connection gets a context built from ``cert_file``
    as it is at that moment, completes the handshake and is closed."""

    def __init__(self, cert_file: Path) -> None:
        self.cert_file = cert_file
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self.refused = 0
        self.server_names: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert_file))
        context.sni_callback = lambda sock, name, ctx: self.server_names.append(name or "")
        return context

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.closing(conn):
                conn.settimeout(5)
                try:
                    with self._context().wrap_socket(conn, server_side=True):
                        self.handshakes += 1
                except (OSError, ssl.SSLError):  # a client that refused the certificate
                    self.refused += 1

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(5)
