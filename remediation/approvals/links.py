"""Signed, expiring approve/deny links for notifications (issue 14).

A link names one approval, one decision and an expiry (the approval's own), signed with
REMEDIATION_SIGNING_KEY: whoever holds it can take that one decision on that one approval
until then, and nothing else. A link is a credential: it is made only where a notification
is sent (the notify action) and never stored, logged or put in task arguments (those hold
the approval id only). Opening it (GET) shows the plan and a button; only the POST decides,
so a mail scanner or a chat preview that fetches the link decides nothing.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from remediation import signing

DECISIONS = ("approve", "deny")
PATH = "/approvals/{id}/link"


def _payload(approval_id: str, decision: str, expires: int) -> dict[str, object]:
    return {"id": approval_id, "d": decision, "exp": expires}


def make(key: bytes, base_url: str, approval_id: str, decision: str, expires: int) -> str:
    """The URL of one decision on one approval, valid until ``expires`` (epoch seconds)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision is one of {DECISIONS}")
    sig = signing.sign(key, "approval_link", _payload(approval_id, decision, expires))
    query = urlencode({"d": decision, "exp": expires, "sig": sig})
    return base_url.rstrip("/") + PATH.format(id=approval_id) + "?" + query


def check(key: bytes, approval_id: str, decision: str, expires: str, sig: str) -> str | None:
    """None when the link is good now; else why not (for the page, never which part)."""
    if decision not in DECISIONS or not expires.isdigit() or len(expires) > 12:
        return "this link is not one the remediator made"
    if not signing.valid(key, "approval_link", _payload(approval_id, decision, int(expires)), sig):
        return "this link is not one the remediator made"
    if int(expires) <= time.time():
        return "this link has expired"
    return None
