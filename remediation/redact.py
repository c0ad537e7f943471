"""Mask secrets wherever text leaves the process: logs, audit rows, Celery's argsrepr."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# user:password@ in any URL or DSN
# (the scheme is at most 32 characters: unbounded, a long run of letters took quadratic time)
_URL_PASSWORD = re.compile(
    r"(?P<head>(?<![a-zA-Z0-9+.\-])[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?=@)"
)
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


_MAX_INT_BITS = 330  # about 100 digits: bigger integers are stored as a description


def storable(value: Any) -> Any:
    """A copy of value that JSON and PostgreSQL can store: NUL shown as \\0, lone surrogates
    replaced, NaN/Infinity and huge integers as text, keys as text. For audit rows of
    rejected input, which may hold anything a caller sent."""
    if isinstance(value, str):
        return value.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            return f"<integer of about {value.bit_length() * 3 // 10} digits>"
        return value
    if isinstance(value, float):
        finite = value == value and value not in (float("inf"), float("-inf"))
        return value if finite else str(value)
    if isinstance(value, dict):
        return {storable(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return storable(repr(value))
