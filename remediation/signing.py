"""HMAC signatures for what crosses the broker or the disk and claims where it came from:
trigger headers (which finding an action call answers) and backup manifests.

One key (REMEDIATION_SIGNING_KEY) with a domain per use, so a signature made for one use is
never valid for another. Canonical JSON (sorted keys, no spaces) is what gets signed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from remediation.errors import ConfigError
from remediation.settings import Settings

DOMAINS = ("trigger", "manifest", "approval", "approval_link", "slot", "event")


def key_of(settings: Settings) -> bytes:
    """The signing key; ConfigError naming the variable when it is not set."""
    if settings.signing_key is None:
        raise ConfigError(
            "REMEDIATION_SIGNING_KEY: not set: it signs trigger headers and backup manifests"
            " (make run creates one in .data/signing.key; or: python -c"
            " 'import secrets; print(secrets.token_hex(32))')"
        )
    return settings.signing_key.get_secret_value().encode()


def canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: bytes, domain: str, payload: Any) -> str:
    """Hex HMAC-SHA256 of the payload's canonical JSON, for one domain."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown signing domain {domain!r}")
    return hmac.new(key, domain.encode() + b"\x00" + canonical(payload), hashlib.sha256).hexdigest()


def valid(key: bytes, domain: str, payload: Any, signature: Any) -> bool:
    """Constant-time comparison of signature with the payload's."""
    if not isinstance(signature, str) or not signature.isascii():
        return False  # compare_digest raises TypeError on non-ASCII str (a forged link: 503)
    return hmac.compare_digest(sign(key, domain, payload), signature)
