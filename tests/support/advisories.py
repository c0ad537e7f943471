"""A local advisory service for pip-audit: OSV's query API (POST /v1/query) on 127.0.0.1.

pip-audit's OSV service takes its URL from `--osv-url` (REMEDIATION_DEPENDENCIES__OSV_URL),
so these tests audit against advisories made here, never the internet. ``fail_status`` makes
every query answer that HTTP status (a failing service).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def advisory(
    osv_id: str, package: str, fixed: list[str], aliases: list[str] | None = None
) -> dict[str, Any]:
    """One OSV record: ``package`` affected from 0 up to each fixed version."""
    events: list[dict[str, str]] = [{"introduced": "0"}, *({"fixed": v} for v in fixed)]
    return {
        "id": osv_id,
        "schema_version": "1.6.0",
        "aliases": aliases or [],
        "summary": f"test advisory {osv_id} for {package}",
        "affected": [
            {
                "package": {"name": package, "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
            }
        ],
    }


@dataclass
class OsvServer:
    """Answers {"vulns": [...]} for the (package, version) pairs in ``records``, {} otherwise."""

    records: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    fail_status: int | None = None
    stall: threading.Event | None = None  # set: every answer waits for it (at most 60 s)
    queries: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = json.loads(body or b"{}")
                owner.queries.append(query)
                if owner.stall is not None:
                    owner.stall.wait(60)
                if owner.fail_status is not None or self.path != "/v1/query":
                    self._answer(owner.fail_status or 404, {})
                    return
                key = (query["package"]["name"], query["version"])
                vulns = owner.records.get(key)
                self._answer(200, {"vulns": vulns} if vulns else {})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/query"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
