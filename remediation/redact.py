"""Mask secrets wherever text leaves the process: logs, audit rows, Celery's argsrepr.

The patterns run on RE2 (google-re2), whose matching time is linear in the input whatever the
pattern and the input: a caller's kwarg of a megabyte of quotes and secret words costs
milliseconds, never the quadratic (or worse) backtracking of Python's re. RE2 has no
lookaround, so the patterns capture what they keep and the replacement puts it back.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import re2

MASK = "***"

# user:password@ in any URL or DSN, wherever it starts (also glued to other text:
# "946.redis://u:pw@h"). The password runs to the last '@' before whitespace, so one with an
# unencoded '@' or '/' is masked whole; a later '@' in the same word (an e-mail in the query)
# masks the host too, which errs on the safe side.
_URL_PASSWORD = re2.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://[^:/@\s]*:)(?P<pw>[^\s]*)@")
# Words that name a secret, also inside a longer name (sslpassword, db_password, x-api-key).
_SECRET_WORDS = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
# password=... in key=value DSNs and query strings (sslpassword=, PGPASSWORD=, db_token=)
_KV_SECRET = re2.compile(
    r"(?i)(?P<key>\b[a-z0-9_]*" + _SECRET_WORDS + r"[a-z0-9_]*\s*=\s*)"
    r"(?P<val>'[^']*'|\"[^\"]*\"|[^\s&,;'\"}]+)"
)
# "password": "..." in JSON and 'password': '...' in Python reprs
_QUOTED_SECRET = re2.compile(
    r"(?i)(?P<key>[\"'][a-z0-9_\-]*" + _SECRET_WORDS + r"[a-z0-9_\-]*[\"']\s*:\s*)"
    r"(?P<val>\"[^\"]*\"|'[^']*')"
)
_AUTH_HEADER = re2.compile(r"(?P<key>\b(?:Bearer|Basic|Token)\s+)(?P<val>[A-Za-z0-9._~+/=\-]{6,})")
PATTERNS = {
    "url_password": _URL_PASSWORD,
    "key_value": _KV_SECRET,
    "quoted": _QUOTED_SECRET,
    "auth_header": _AUTH_HEADER,
}
"""Every pattern redact_text applies, by name (bench/redaction.py times each on hostile input)."""

_SECRET_KEY = re2.compile(
    r"(?i)(pass(word|wd)?|secret|token|api[_-]?key|apikey|authorization|auth|credential|"
    r"private[_-]?key|session[_-]?id|cookie|dsn|webhook)"
)


def _any_of(patterns: dict[str, Any]) -> Any:
    """One pattern that matches where any of ``patterns`` would: a text it does not match
    comes out of every substitution unchanged, so it is searched once, not substituted four
    times (most of what is redacted, every log line and audit value, holds no secret)."""
    parts = [re2.sub(r"\(\?P<[a-z]+>", "(?:", p.pattern) for p in patterns.values()]
    return re2.compile("|".join(f"(?:{part})" for part in parts))


_ANY_SECRET = _any_of(PATTERNS)


def _quoted(m: Any) -> str:
    quote = m.group("val")[0]
    return f"{m.group('key')}{quote}{MASK}{quote}"


def redact_text(text: str) -> str:
    """Mask passwords in URLs, key=value secrets, quoted secrets and Authorization values."""
    text = str(text)  # re2 builds its result with type(text)(), which a StrEnum refuses
    if not _ANY_SECRET.search(text):
        return text
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", text)
    text = _KV_SECRET.sub(lambda m: m.group("key") + MASK, text)
    text = _QUOTED_SECRET.sub(_quoted, text)
    return str(_AUTH_HEADER.sub(lambda m: m.group("key") + MASK, text))


def is_secret_key(key: str) -> bool:
    """True for mapping keys whose values are secrets (password, token, api_key ...).
    Memoized for short keys: the same few dozen (params, results, log fields) come back on
    every call; a long key (only hostile input has them) is searched and not kept."""
    if len(key) > _CACHED_KEY_CHARS:
        return bool(_SECRET_KEY.search(key))
    return _short_secret_key(key)


_CACHED_KEY_CHARS = 64
"""Keys up to this long are memoized (at most 4,096 of them: 256 KiB, whatever callers send)."""


@functools.lru_cache(maxsize=4096)
def _short_secret_key(key: str) -> bool:
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


PREFIX_CHARS = 256
"""Characters of an oversized value kept (redacted) in its truncated form."""


def serialized_size(value: Any) -> int:
    """Bytes of value as compact JSON (what the broker carried); unserializable parts as text."""
    try:
        return len(json.dumps(value, separators=(",", ":"), default=str).encode())
    except (ValueError, TypeError, RecursionError):  # ints past 4,300 digits, cycles
        return len(json.dumps(storable(value), separators=(",", ":")).encode())


def truncated(value: Any) -> dict[str, Any]:
    """What an audit row keeps of an oversized value: its size, the sha256 of its JSON and a
    redacted prefix, never the value itself. Secrets are masked before the cut, so the cut
    never leaves half a secret the patterns no longer recognise."""
    raw = json.dumps(storable(value), separators=(",", ":"), ensure_ascii=False)
    shown = json.dumps(redact(storable(value)), separators=(",", ":"), ensure_ascii=False)
    data = raw.encode("utf-8", "replace")
    return {
        "_truncated": True,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "prefix": shown[:PREFIX_CHARS],
    }


def bounded_text(text: str, limit: int) -> str:
    """text cut to at most limit characters, saying how long it was."""
    if len(text) <= limit:
        return text
    note = f"... ({len(text)} characters, cut)"
    return text[: max(limit - len(note), 0)] + note
