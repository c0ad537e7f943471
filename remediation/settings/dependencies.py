"""Vulnerable dependencies found by pip-audit (runbooks 003 "Update dependencies", 004 "Dependency vulnerabilities")."""

from __future__ import annotations

from remediation.settings.base import Section


class DependencySettings(Section):
    """Vulnerable dependencies found by pip-audit (runbooks 003 "Update dependencies", 004 "Dependency vulnerabilities")."""
