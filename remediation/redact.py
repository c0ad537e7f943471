"""Mask secrets wherever text leaves the process: logs, audit rows, Celery's argsrepr."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# user:password@ in any URL or DSN
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?=@)")
_SECRET_WORDS = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
# password=... in key=value DSNs and query strings
_KV_SECRET = re.compile(
    r"(?P<key>\b" + _SECRET_WORDS + r"\s*=\s*)(?P<val>'[^']*'|\"[^\"]*\"|[^\s&,;'\"}]+)",
    re.IGNORECASE,
)
# "password": "..." in JSON and 'password': '...' in Python reprs
_QUOTED_SECRET = re.compile(
    r"(?P<key>[\"']\w*" + _SECRET_WORDS + r"\w*[\"']\s*:\s*)(?P<val>\"[^\"]*\"|'[^']*')",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(r"(?P<key>\b(?:Bearer|Basic|Token)\s+)(?P<val>[A-Za-z0-9._~+/=\-]{6,})")
_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|apikey|authorization|auth|credential|"
    r"private[_-]?key|session[_-]?id|cookie|dsn|webhook)",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """Mask passwords in URLs, key=value secrets and Authorization header values."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = _KV_SECRET.sub(lambda m: m.group("key") + MASK, text)
    text = _QUOTED_SECRET.sub(
        lambda m: m.group("key") + m.group("val")[0] + MASK + m.group("val")[0], text
    )
    return _AUTH_HEADER.sub(lambda m: m.group("key") + MASK, text)


def is_secret_key(key: str) -> bool:
    """True for mapping keys whose values are secrets (password, token, api_key ...)."""
    return bool(_SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    """Deep copy of value with secrets masked: secret-looking keys and secrets inside text."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                else redact(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if hasattr(value, "get_secret_value"):
        return MASK
    return value
