"""Runs ops runbooks unattended on Celery: checks, guarded actions, verification, audit.

``celery -A remediation ...`` finds the Celery app through ``remediation.app``, built on
first access so that importing the package never reads configuration.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        import sys

        from remediation.celery_app import get_app
        from remediation.errors import ConfigError

        try:
            return get_app()
        except ConfigError as exc:  # stop at start with a message naming the variable
            print(f"remediation: invalid configuration: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    raise AttributeError(name)
