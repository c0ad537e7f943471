"""Runbook 001 "Security Incident Response: block suspicious IPs and update firewall rules":
a ban with expiry in the blocklist applications read (state Redis) and, when configured, in
an nftables set with timeouts on this host."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

from pydantic import Field, field_validator

from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Deferred, Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.plans import Plan, item, plan_of
from remediation.registry import action
from remediation.resolve import canonical
from remediation.security import access_logs as al
from remediation.security import bans

CAP_VAR = "REMEDIATION_GUARDS__BLAST_RADIUS"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_ADDRESS = rf"^(?:{_OCTET}(?:\.{_OCTET}){{3}}|[0-9A-Fa-f:.]{{2,45}})$"
"""The characters an address may have (IPv4 dotted, or IPv6); ipaddress decides the rest."""


class BlockIpParams(ActionParams):
    ip: str = Field(
        min_length=2,
        max_length=45,
        pattern=_ADDRESS,
        description="one IPv4 or IPv6 host address (read by ipaddress)",
    )

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        ip = al.parse_ip(value)
        if ip is None:
            raise ValueError("not a client address (one IPv4 or IPv6 host, no zone, no network)")
        return str(ip)


def resolve_ban(ctx: CheckContext, params: BlockIpParams) -> Resolved:
    """The address canonical (ipaddress), the target a configured access log's name (as
    configured) or "self" (a ban by hand).

    Refused: an allow-listed address (loopback, REMEDIATION_ACCESS__ALLOW_NETWORKS), an
    unknown log, or no blast-radius cap for block_ip (bans are never unbounded)."""
    cfg = ctx.settings.access
    ip = al.parse_ip(params.ip)
    if ip is None:  # the params validator already said so; kept for direct calls
        raise Refused(f"{params.ip!r} is not a client address")
    net = next((n for n in cfg.networks() if ip.version == n.version and ip in n), None)
    if net is not None:
        raise Refused(
            f"{ip} is allow-listed ({net}: loopback or REMEDIATION_ACCESS__ALLOW_NETWORKS)"
        )
    if "block_ip" not in ctx.settings.guards.blast_radius:
        raise Refused(f"block_ip needs a blast-radius cap: {CAP_VAR} has no block_ip entry")
    target = "self"
    if params.target.lower() != "self":
        log = cfg.log(params.target)
        if log is None:
            raise Refused(f"no access log named {params.target!r} in REMEDIATION_ACCESS__LOGS")
        target = log.name
    return canonical(params, target=target, ip=str(ip))


def _resource(params: BlockIpParams) -> str:
    """One lock, cooldown and flap count per address, whichever log saw it."""
    return f"ip:{params.ip}"


def _one(settings: Any, params: BlockIpParams) -> int:
    """Each call may place one ban: one unit of block_ip's blast radius, reserved at
    admission (given back when the address was banned already)."""
    return 1


def ip_key(ip: str) -> str:
    """An address as a plan names it."""
    return f"ip:{ip}"


def _terms(cfg: Any) -> dict[str, Any]:
    """A ban's length terms: the same for the plan and the ban it then places."""
    return {
        "base": cfg.bantime_seconds,
        "factor": cfg.bantime_factor,
        "most": cfg.bantime_max_seconds,
    }


def _nft_set(cfg: Any, ip: str) -> str:
    return f"inet {cfg.nft_table} {bans.Nft(cfg).set_for(ip)}"


def plan_ban(ctx: CheckContext, params: BlockIpParams) -> Plan:
    """The ban the address would get now (read-only): its duration after earlier offences
    (BANTIME_SECONDS x BANTIME_FACTOR per offence, capped), or the ban it already has, and
    the nft set it would go in."""
    cfg = ctx.settings.access
    params = resolve_ban(ctx, params).params
    ip = params.ip
    pending = bans.would_ban(ctx.state, ip, **_terms(cfg))
    seconds = math.ceil(pending.seconds)
    nft_set = _nft_set(cfg, ip) if cfg.nft else None
    if pending.new:
        what = f"ban {ip} for {seconds}s (offence {pending.offence})"
    else:
        what = f"{ip} is banned already ({seconds}s left): kept as it is"
    what += f", in Redis and {nft_set}" if nft_set else ", in Redis"
    detail = {"ip": ip, "new": pending.new, "seconds": seconds, "offence": pending.offence}
    return plan_of(what, [item(ip_key(ip), what, **detail, nft_set=nft_set, log=params.target)])


@action(
    "block_ip",
    resolve=resolve_ban,
    resource=_resource,
    plan=plan_ban,
    upfront=_one,
    cooldown=timedelta(0),
    max_per_hour=None,
    timeout=timedelta(seconds=60),
)
def block_ip(ctx: ActionContext, params: BlockIpParams) -> ActionResult:
    """Ban a client address (runbook 001 "Block suspicious IPs"): a key with expiry in the
    state Redis that applications check (`EXISTS rem:ban:ip:<ip>`) and, with
    REMEDIATION_ACCESS__NFT on, an element with the same timeout in this host's nftables set
    (inet table NFT_TABLE, sets NFT_SET_V4 / NFT_SET_V6, a drop rule in NFT_CHAIN; made when
    missing). BANTIME_SECONDS, times BANTIME_FACTOR per earlier offence within
    REPEAT_WINDOW_SECONDS, at most BANTIME_MAX_SECONDS. Expiry lifts the ban by itself;
    `remediation unblock IP` lifts it by hand. Never an allow-listed address (refused before
    any guard); at most the block_ip blast-radius cap of new bans per window across all
    workers (REMEDIATION_GUARDS__BLAST_RADIUS). An address banned already keeps its ban (its
    nft element is put back if missing) and costs no unit. The nft part acts on the worker
    that runs it: route block_ip to the host's queue. Verified by the check: the client
    is no longer reported while its ban is in force everywhere."""
    cfg = ctx.settings.access
    params = resolve_ban(ctx, params).params
    ip = params.ip
    if not ctx.approves(ip_key(ip)):  # an approval names one address: never another
        raise Refused(f"{ip} is not the address approved", notice=False)
    if ctx.reserve(1) < 1:  # the unit the admission reserved (blast radius)
        raise Deferred(
            f"blast-radius cap for block_ip spent ({CAP_VAR})", time.time() + 60, "blast"
        )
    placed = bans.ban(
        ctx.state,
        ip,
        **_terms(cfg),
        repeat_window=cfg.repeat_window_seconds,
        log=params.target,
        reason=ctx.trigger.incident if ctx.trigger else "by hand",
    )
    if not placed.new:
        ctx.give_back(1)
    seconds = math.ceil(placed.seconds)
    detail: dict[str, Any] = {
        "ip": ip,
        "new": placed.new,
        "seconds": seconds,
        "offence": placed.offence,
        "until": placed.at + placed.seconds if placed.new else None,
        "redis_key": bans.ban_key(ip),
    }
    verb = f"banned {ip} for {seconds}s (offence {placed.offence})"
    if not placed.new:
        verb = f"{ip} already banned ({seconds}s left)"
    if cfg.nft:
        nft = bans.Nft(cfg)
        try:
            detail["nft_made"] = nft.ensure()
            nft.add(ip, seconds)
        except bans.BanError as exc:
            detail["nft_error"] = str(exc)
            return ActionResult(
                ok=False, changed=placed.new, summary=f"{verb} in Redis; nft: {exc}", detail=detail
            )
        detail["nft_set"] = _nft_set(cfg, ip)
        verb += f", in Redis and {detail['nft_set']}"
    return ActionResult(ok=True, changed=placed.new or cfg.nft, summary=verb, detail=detail)
