"""`remediation watch`: the event sources, in the foreground (beside worker and beat)."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from remediation.settings import Settings
from remediation.settings.watch import SOURCES


def add_parser(sub: Any) -> None:
    w = sub.add_parser(
        "watch", help="event sources (Docker, Celery, log files) -> the checks, in seconds"
    )
    w.add_argument(
        "--source",
        action="append",
        choices=SOURCES,
        help="only this source (repeatable); default REMEDIATION_WATCH__SOURCES",
    )
    w.add_argument("--id", help="this watcher's name in leases and audits (default host:pid)")


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    from remediation import watch
    from remediation.celery_app import get_app
    from remediation.clients import redis as redis_clients
    from remediation.logging import configure_logging
    from remediation.watch.core import Watcher

    sources, skipped = watch.build(settings, args.source)
    for why in skipped:
        print(f"remediation watch: not watching {why}", file=sys.stderr)
    if not sources:
        print("remediation watch: no event source is configured", file=sys.stderr)
        return 2
    app = get_app()  # validates settings and the signing key; configures logging
    configure_logging(settings.log_level, settings.log_format)  # a daemon logs what it does

    def send(name: str, kwargs: dict[str, Any], headers: dict[str, Any]) -> None:
        app.send_task(name, kwargs=kwargs, headers=headers)

    watcher = Watcher(settings, sources, send, redis_clients.state(settings), args.id)

    def stop(signum: int, _frame: Any) -> None:
        watcher.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if settings.watch.metrics_port:
        from prometheus_client import start_http_server

        cfg = settings.watch
        try:
            start_http_server(cfg.metrics_port, addr=cfg.metrics_host, registry=watcher.registry)
        except OSError as exc:  # a standby on the same host: the events matter, not the page
            watcher.log.error(
                "metrics endpoint could not start", port=cfg.metrics_port, error=str(exc)
            )
    watcher.run()
    return 0


COMMANDS = {"watch": cmd_watch}
