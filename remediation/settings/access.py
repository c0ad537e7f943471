"""Hostile clients in access logs and the bans that answer them (runbooks 003 "Review access logs", 001 "Block suspicious IPs")."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from remediation.settings.base import Section, unique_names

_LOG_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
ALWAYS_ALLOWED = ("127.0.0.0/8", "::1/128")
"""Never banned, whatever is configured: loopback."""


class AccessLog(Section):
    """One access log: where it is, how its lines read, and (JSON lines) which fields hold
    the client address, the status and the time."""

    name: str = Field(min_length=1, max_length=64, description="finding target, ban provenance")
    path: str = Field(min_length=1, max_length=4096)
    format: Literal["combined", "json"] = "combined"
    ip_field: str = Field("remote_addr", min_length=1, max_length=200, description="JSON, dotted")
    status_field: str = Field("status", min_length=1, max_length=200)
    time_field: str = Field("time", min_length=1, max_length=200, description="ISO 8601 or epoch")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _LOG_NAME.match(value):
            raise ValueError("log names are 1-64 letters, digits, '_', '.', '-'")
        return value


class AccessSettings(Section):
    """Hostile clients in access logs and the bans that answer them (runbooks 003 "Review access logs", 001 "Block suspicious IPs")."""

    logs: list[AccessLog] = Field(default_factory=list, max_length=50)
    statuses: list[int] = Field(default_factory=lambda: [401, 403, 429], min_length=1)
    findtime_seconds: int = Field(600, ge=1, le=7 * 86400, description="fail2ban findtime")
    maxretry: int = Field(5, ge=1, le=100_000, description="fail2ban maxretry")
    max_bytes_per_run: int = Field(64 << 20, ge=4096, le=4 << 30, description="per log")
    max_line_bytes: int = Field(16384, ge=256, le=1 << 20)
    max_clients: int = Field(100_000, ge=100, le=10_000_000, description="tracked per log")
    max_findings: int = Field(1000, ge=1, le=100_000, description="hostile clients per run")
    surge_offenders: int = Field(50, ge=1, description="distinct offenders: access_hostile_surge")
    allow_networks: list[str] = Field(default_factory=list, max_length=1000)
    bantime_seconds: int = Field(600, ge=1, le=365 * 86400)
    bantime_factor: float = Field(2.0, ge=1, le=100, description="per repeat offence")
    bantime_max_seconds: int = Field(7 * 86400, ge=1, le=365 * 86400)
    repeat_window_seconds: int = Field(7 * 86400, ge=1, le=365 * 86400)
    nft: bool = Field(False, description="also ban in an nftables set (needs CAP_NET_ADMIN)")
    nft_command: list[str] = Field(default_factory=lambda: ["nft"], min_length=1, max_length=20)
    nft_table: str = "remediation"
    nft_set_v4: str = "banned_v4"
    nft_set_v6: str = "banned_v6"
    nft_chain: str = "input"
    nft_priority: int = Field(-10, ge=-1000, le=1000, description="before the filter chains")
    nft_timeout_seconds: float = Field(10, gt=0, le=300)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad one
        return value

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, value: list[int]) -> list[int]:
        if any(not 100 <= s <= 599 for s in value):
            raise ValueError("statuses are HTTP status codes (100-599)")
        return value

    @field_validator("nft_table", "nft_set_v4", "nft_set_v6", "nft_chain")
    @classmethod
    def _nft_name(cls, value: str) -> str:
        if not _NFT_NAME.match(value):
            raise ValueError("nftables names are a letter then up to 31 letters, digits or '_'")
        return value

    @model_validator(mode="after")
    def _unique(self) -> AccessSettings:
        unique_names(log.name.lower() for log in self.logs)
        return self

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Loopback and the configured allow-list, parsed."""
        return [
            ipaddress.ip_network(n, strict=False) for n in (*ALWAYS_ALLOWED, *self.allow_networks)
        ]

    def log(self, name: str) -> AccessLog | None:
        """The configured log of that name (any case), or None."""
        return next((log for log in self.logs if log.name.lower() == name.lower()), None)
