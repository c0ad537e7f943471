"""An API provider on 127.0.0.1 for the API key tests: it accepts the keys it issued and
refuses others, issues new keys, revokes old ones, and logs every call in order (with which
key, so a test can prove generate -> validate -> write -> revoke)."""

from __future__ import annotations

import itertools
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PROVIDER_SCRIPT = """
import sys, urllib.request
old = sys.stdin.readline().strip()
req = urllib.request.Request(sys.argv[1], method="POST", headers={"Authorization": "Bearer " + old})
with urllib.request.urlopen(req, timeout=10) as resp:
    print(resp.read().decode())
"""
"""A provider command: reads the old key on stdin, asks the API for a new one, prints it."""


class KeyApi:
    """GET /validate, POST /generate (plain text, or JSON at /generate.json), DELETE /revoke;
    the key in `Authorization: Bearer KEY`. ``log`` holds (call, key) in arrival order."""

    def __init__(self, *valid: str) -> None:
        self.valid: set[str] = set(valid)
        self.log: list[tuple[str, str]] = []
        self.validate_status: int | None = None  # force an answer (500: cannot tell)
        self.issue_unusable = False  # generate a key that validation refuses
        self.revoke_status = 204
        self._serial = itertools.count(1)
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _key(self) -> str:
                return self.headers.get("Authorization", "").removeprefix("Bearer ")

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                key = self._key()
                with api.lock:
                    api.log.append(("validate", key))
                    ok = key in api.valid
                forced = api.validate_status
                self._answer(forced or (200 if ok else 401), b"{}")

            def do_POST(self) -> None:
                key = self._key()
                with api.lock:
                    api.log.append(("generate", key))
                    if key not in api.valid:
                        self._answer(401)
                        return
                    new = f"issued-{next(api._serial)}-{'x' * 24}"
                    if not api.issue_unusable:
                        api.valid.add(new)
                body = json.dumps({"data": {"key": new}}) if self.path.endswith(".json") else new
                self._answer(200, body.encode())

            def do_DELETE(self) -> None:
                key = self._key()
                with api.lock:
                    api.log.append(("revoke", key))
                    status = api.revoke_status
                    if status < 300:
                        api.valid.discard(key)
                self._answer(status)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{path.lstrip('/')}"

    def calls(self) -> list[str]:
        return [call for call, _ in self.log]

    def provider_command(self, folder: Path) -> list[str]:
        script = folder / "provider.py"
        script.write_text(PROVIDER_SCRIPT)
        return [sys.executable, str(script), self.url("generate")]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
