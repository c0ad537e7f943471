"""structlog set-up: JSON lines off a terminal, readable on one; every record redacted.

Celery's own records are routed through the same processors (see celery_app's
``setup_logging`` handler), so a secret is masked whichever logger emitted it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from remediation.redact import redact, redact_text


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every value of the event dict."""
    for key, value in list(event.items()):
        if key in ("_record", "_from_structlog"):
            continue
        event[key] = redact(value) if key != "event" else redact_text(str(value))
    return event


def _redact_exc_text(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Exceptions are formatted to text before rendering; mask that text too."""
    if isinstance(event.get("exception"), str):
        event["exception"] = redact_text(event["exception"])
    return event


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    """Install structlog and route the stdlib root logger (and so Celery) through it."""
    stream = stream or sys.stderr
    json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_event,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_exc_text,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "docker", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))


def get_logger(name: str = "remediation") -> Any:
    """A structlog logger; bind per-task context with structlog.contextvars."""
    return structlog.get_logger(name)
