"""Hostile clients in access logs and the bans that answer them (runbooks 003 "Review access logs", 001 "Block suspicious IPs")."""

from __future__ import annotations

from remediation.settings.base import Section


class AccessSettings(Section):
    """Hostile clients in access logs and the bans that answer them (runbooks 003 "Review access logs", 001 "Block suspicious IPs")."""
