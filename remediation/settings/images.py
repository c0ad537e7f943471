"""Image updates for compose services (runbook 001 "Monthly Operations 1. Security Updates": pull base images, rebuild)."""

from __future__ import annotations

from remediation.settings.base import Section


class ImageSettings(Section):
    """Image updates for compose services (runbook 001 "Monthly Operations 1. Security Updates": pull base images, rebuild)."""
