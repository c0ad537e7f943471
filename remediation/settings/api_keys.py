"""API keys: presence, validity, age and rotation (runbooks 003 "Rotate API keys", 004 "API key validation failure")."""

from __future__ import annotations

from remediation.settings.base import Section


class ApiKeySettings(Section):
    """API keys: presence, validity, age and rotation (runbooks 003 "Rotate API keys", 004 "API key validation failure")."""
