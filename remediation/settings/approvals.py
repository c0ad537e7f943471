"""Approvals (issue 14): which action calls wait for a human, and for how long."""

from __future__ import annotations

from pydantic import Field, field_validator

from remediation.settings.base import Section

DEFAULT_REQUIRE = [
    "terminate_idle_transactions",  # ends sessions (their transactions roll back)
    "cancel_long_queries",  # cancels queries
    "revoke_stuck_tasks",  # terminates tasks
    "block_ip",  # bans clients
    "recreate_service",  # removes containers and their writable layers (opt-in besides)
]
"""Actions that wait for approval unless REMEDIATION_APPROVALS__REQUIRE says otherwise: the
session-ending, query-cancelling, task-revoking and IP-blocking ones, and the hard reboot."""
_ENTRY = r"^[a-z][a-z0-9_]{0,63}(@[A-Za-z0-9_.:\-]{1,128})?$"


class ApprovalSettings(Section):
    """Which calls need approval, how long an approval waits, where its links point."""

    require: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REQUIRE),
        max_length=200,
        description='entries "action" (every target) or "action@target" (one configured'
        " target); [] = no action waits for approval",
    )
    ttl_seconds: int = Field(
        3600,
        ge=60,
        le=7 * 86400,
        description="a pending approval not decided within this is expired (= denied, audited)",
    )
    link_base_url: str | None = Field(
        None,
        max_length=300,
        pattern=r"^https?://[^\s?#]+$",
        description="where `remediation serve` is reached from a notification, e.g."
        " https://remediation.example.net; set, notifications carry signed approve/deny links",
    )

    @field_validator("require")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        import re

        for entry in value:
            if not re.match(_ENTRY, entry):
                raise ValueError(f'{entry!r}: an entry is "action" or "action@target"')
        return value

    def required(self, action: str, target: str) -> bool:
        """Whether a call of ``action`` on the canonical ``target`` waits for approval."""
        return action in self.require or f"{action}@{target}" in self.require
