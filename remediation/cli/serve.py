"""`remediation serve`: the HTTP service (Alertmanager intake), in the foreground."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from remediation.settings import Settings


def add_parser(sub: Any) -> None:
    sv = sub.add_parser("serve", help="HTTP service: Alertmanager webhook at POST /alerts")
    sv.add_argument("--host", help="default REMEDIATION_SERVE__HOST (127.0.0.1)")
    sv.add_argument("--port", type=int, help="default REMEDIATION_SERVE__PORT (8087)")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from remediation import serve
    from remediation.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)  # a daemon logs what it does
    if not settings.serve.tokens:
        print(
            "remediation serve: REMEDIATION_SERVE__TOKENS is empty: every call is a 401",
            file=sys.stderr,
        )
    serve.run(settings, args.host, args.port)  # ConfigError: exit 2, naming the variable
    return 0


COMMANDS = {"serve": cmd_serve}
