"""Real Prometheus and Alertmanager processes (Debian's packages) and a real
`remediation serve` process, on loopback ports with configs in a temp dir; and a tiny
exporter whose metric the test's fault drives."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import requests

from tests.support.base import ROOT, free_port, wait_for
from tests.support.own_stack import OwnStack, own_stack
from tests.support.rabbitmq import Broker

QUEUE_RULE: dict[str, Any] = {
    "name": "queue-duplicates",
    "alertname": "JobQueueDuplicates",
    "kind": "redis_job_queue_duplicates",
    "target": {"value": "self"},
    "subject": {"label": "queue"},
    "severity": {"label": "severity"},
    "check": "redis_job_queue",
    "check_labels": {"key": "queue"},
}
"""The alert rule of webhook_payload's JobQueueDuplicates: a check of the queue named by
the alert's ``queue`` label (REMEDIATION_ALERTS__RULES)."""
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"


@dataclass
class Process:
    """A server process with a log file; ready when ``ready_url`` answers 200."""

    cmd: list[str]
    log_path: Path
    ready_url: str
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0  # the loopback port it listens on

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Process:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
        )
        try:
            wait_for(self._ready, timeout, 0.1, f"{self.cmd[0]} ready")
        except TimeoutError:
            self.stop()
            raise RuntimeError(self.log()[-3000:]) from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.cmd[0]} exited:\n{self.log()[-3000:]}")
        try:
            return requests.get(self.ready_url, timeout=0.5).status_code == 200
        except requests.RequestException:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


def alertmanager(folder: Path, webhook_url: str, token: str) -> Process:
    """An Alertmanager (no cluster) that posts every alert to ``webhook_url`` at once (group
    wait 0 s, group interval 1 s), resolved ones too, with a bearer token."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "route": {
            "receiver": "remediation",
            "group_by": ["alertname"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "remediation",
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": token}},
                    }
                ],
            }
        ],
    }
    (folder / "alertmanager.yml").write_text(json.dumps(config))  # JSON is YAML
    cmd = [
        ALERTMANAGER,
        f"--config.file={folder / 'alertmanager.yml'}",
        f"--storage.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    return Process(cmd, folder / "alertmanager.log", f"http://127.0.0.1:{port}/-/ready", port=port)


def prometheus(
    folder: Path,
    targets: list[str],
    rules: list[dict[str, Any]] | None = None,
    managers: list[int] | None = None,
) -> Process:
    """A Prometheus scraping ``targets`` and evaluating ``rules`` every second, sending its
    alerts to the Alertmanagers on ``managers`` (ports) without delay."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": targets}]}],
    }
    if rules:
        (folder / "rules.yml").write_text(
            json.dumps({"groups": [{"name": "test", "rules": rules}]})
        )
        config["rule_files"] = [str(folder / "rules.yml")]
    if managers:
        targets_am = [f"127.0.0.1:{p}" for p in managers]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": targets_am}]}]}
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    cmd = [
        PROMETHEUS,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--rules.alert.resend-delay=1s",
        "--log.level=warn",
    ]
    return Process(cmd, folder / "prometheus.log", f"http://127.0.0.1:{port}/-/ready", port=port)


def serve(env: dict[str, str], folder: Path, port: int | None = None) -> tuple[Process, str]:
    """`remediation serve` of this checkout on ``port`` (a free one by default); (process,
    base URL)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    binary = str(Path(ROOT) / ".venv" / "bin" / "remediation")
    if not Path(binary).exists():
        binary = shutil.which("remediation") or binary
    cmd = [binary, "serve", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    return Process(cmd, folder / "serve.log", url + "/healthz", env=env), url


@dataclass
class Served:
    """A worker stack with `remediation serve` in front of it, and its state Redis."""

    stack: OwnStack
    url: str
    serve: Process
    state: redis.Redis


@contextlib.contextmanager
def served_stack(
    broker: Broker, pg_admin: str, name: str, slot: int, folder: Path, **env: str
) -> Iterator[Served]:
    """own_stack(broker, pg_admin, name, slot, **env) and `remediation serve` of it (its
    log in ``folder``), started; both stopped at the end."""
    with own_stack(broker, pg_admin, name, slot, **env) as stack:
        process, url = serve(stack.env, folder)
        process.start()
        state = redis.Redis.from_url(stack.env["REMEDIATION_STATE_REDIS_URL"])
        try:
            yield Served(stack, url, process, state)
        finally:
            process.stop()
            state.close()


def webhook_payload(
    fingerprint: str,
    queue: str,
    status: str = "firing",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for one JobQueueDuplicates alert on ``queue``,
    as Alertmanager posts it."""
    alert = {
        "status": status,
        "labels": {"alertname": "JobQueueDuplicates", "queue": queue, "severity": "warning"},
        "annotations": annotations or {},
        "startsAt": "2026-11-28T03:00:00.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1/graph",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": '{}:{alertname="JobQueueDuplicates"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "remediation",
        "groupLabels": {"alertname": "JobQueueDuplicates"},
        "commonLabels": alert["labels"],
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [alert],
    }


@dataclass
class TextExporter:
    """Serves what ``render()`` returns, in the Prometheus text format, at every scrape."""

    render: Any  # () -> str
    port: int = field(default_factory=free_port)

    def start(self) -> TextExporter:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def gauge_exporter(name: str, labels: dict[str, str], value: Any) -> TextExporter:
    """One gauge ``name{labels}`` whose value (``value()``) is read at every scrape."""
    shown = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return TextExporter(lambda: f"# TYPE {name} gauge\n{name}{{{shown}}} {value()}\n")
