"""TLS certificates: expiry, name match and renewal (runbook 001 "Monthly Operations 1. Security Updates": certbot renew)."""

from __future__ import annotations

from remediation.settings.base import Section


class CertificateSettings(Section):
    """TLS certificates: expiry, name match and renewal (runbook 001 "Monthly Operations 1. Security Updates": certbot renew)."""
