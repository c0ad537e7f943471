"""Incident state: one open incident per condition (a finding's fingerprint), shared by
every worker through Redis.

A finding joins the open incident for its condition or opens one; every action it triggers
carries the incident, so one incident acts at most once per resource (the idempotency
guard). Verification closes the incident when the condition recovered, or frees the call's
idempotency record so the next sweep may act again.
"""

from __future__ import annotations

import uuid

import redis

from remediation.clients.redis import text
from remediation.guards import keys


def new_id(fingerprint: str) -> str:
    """A fresh incident name for a condition."""
    return f"{fingerprint}-{uuid.uuid4().hex[:8]}"


def open_or_join(client: redis.Redis, fingerprint: str, candidate: str, ttl: int) -> str:
    """The open incident for this condition; ``candidate`` opened (for ``ttl`` seconds) if
    there is none. Raises the client's errors."""
    key = keys.incident(fingerprint)
    if client.set(key, candidate, nx=True, ex=ttl):
        return candidate
    current = client.get(key)
    return text(current) if current else candidate


def settle(client: redis.Redis, fingerprint: str, idempotency_key: str, recovered: bool) -> None:
    """After verification: close the incident if the condition recovered, else free the
    call's idempotency record (the incident stays open). Raises the client's errors."""
    if recovered:
        client.delete(keys.incident(fingerprint))
    else:
        client.delete(keys.idempotency(idempotency_key))
