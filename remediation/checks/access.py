"""Runbook 003 "Security Procedures: review access logs" (`grep "401\\|403\\|429" ...`) as
fail2ban does it: refusals per client within a window, across runs; runbook 001 "Block
suspicious IPs" is the action it proposes (block_ip)."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from remediation.context import CheckContext
from remediation.errors import Refused
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check
from remediation.security import access_logs as al
from remediation.security import bans, tail
from remediation.settings import AccessSettings
from remediation.settings.access import AccessLog

LOCK_SECONDS = 300
_LOOP = ipaddress.ip_address("127.0.0.1")
KEEP_FACTOR = 4
"""Refusal times kept per client: maxretry times this (the count is exact up to there)."""


class AccessLogClientsParams(CheckParams):
    """target "self": every REMEDIATION_ACCESS__LOGS entry; or one log's name."""


def _logs(cfg: AccessSettings, target: str) -> list[AccessLog]:
    if target.lower() == "self":
        return list(cfg.logs)
    log = cfg.log(target)
    if log is None:
        names = [entry.name for entry in cfg.logs]
        raise Refused(f"no access log named {target!r} in REMEDIATION_ACCESS__LOGS ({names})")
    return [log]


def _read(ctx: CheckContext, cfg: AccessSettings, log: AccessLog, now: float) -> dict[str, Any]:
    """Read what was appended since the last run and add it to the window state. A run that
    finds another run reading the same log leaves the reading to it."""
    r = ctx.state
    token = al.try_lock(r, log.name, LOCK_SECONDS)
    if token is None:
        return {"read": "skipped: another run is reading this log"}
    try:
        chunk = tail.read_new(
            log.path,
            tail.load(r, al.position_key(log.name)),
            cfg.max_bytes_per_run,
            cfg.max_line_bytes,
        )
        parser = al.Parser(
            log.format, cfg.statuses, (log.ip_field, log.status_field, log.time_field)
        )
        hits = parser.parse(chunk.data, now, now - cfg.findtime_seconds)
        keep = min(cfg.maxretry * KEEP_FACTOR, 10_000)
        al.record(r, log.name, hits, cfg.findtime_seconds, keep, cfg.max_clients)
        assert chunk.position is not None
        tail.save(r, al.position_key(log.name), chunk.position)
    finally:
        al.unlock(r, log.name, token)
    return {
        "bytes": len(chunk.data),
        "lines": hits.lines,
        "refusals": hits.matched,
        "old_refusals": hits.old,
        "not_an_address": hits.bad_ip,
        "overlong_lines": chunk.overlong,
        "rotated": chunk.rotated,
        "truncated": chunk.truncated,
        "behind_bytes": chunk.behind_bytes,
        "notes": chunk.notes,
    }


def _enforced(ctx: CheckContext, cfg: AccessSettings, ips: list[str]) -> tuple[set[str], str]:
    """Those of ips whose ban is in force everywhere it is configured: Redis, and the nft set
    when REMEDIATION_ACCESS__NFT is on (read with `nft -j list set`)."""
    in_redis = set(bans.banned(ctx.state, ips))
    if not cfg.nft or not in_redis:
        return in_redis, ""
    try:
        return in_redis & bans.Nft(cfg).elements(), ""
    except bans.BanError as exc:
        return set(), f"cannot read the nft sets: {exc}"


def _log_findings(ctx: CheckContext, cfg: AccessSettings, log: AccessLog) -> list[Finding]:
    now = time.time()
    since = now - cfg.findtime_seconds
    try:
        read = _read(ctx, cfg, log, now)
    except OSError as exc:
        return [_unreadable(log, exc)]
    r, nets = ctx.state, cfg.networks()
    raw = al.window_counts(r, log.name, since)
    offenders = {
        ip: n
        for ip, n in raw.items()
        if n >= cfg.maxretry and not al.allowed(al.parse_ip(ip) or _LOOP, nets)
    }
    effective = al.window_counts(r, log.name, since, bans.ended(r, list(offenders)))
    hostile = {ip: effective[ip] for ip in offenders if effective.get(ip, 0) >= cfg.maxretry}
    enforced, problem = _enforced(ctx, cfg, list(hostile))
    todo = sorted((ip for ip in hostile if ip not in enforced), key=lambda ip: -hostile[ip])
    findings = [
        _hostile(cfg, log, ip, hostile[ip], read, problem) for ip in todo[: cfg.max_findings]
    ]
    if len(offenders) >= cfg.surge_offenders:
        banned_now = len(bans.banned(r, list(offenders)))
        findings.append(_surge(cfg, log, len(offenders), banned_now, read))
    return findings


def _hostile(
    cfg: AccessSettings, log: AccessLog, ip: str, n: int, read: dict[str, Any], problem: str
) -> Finding:
    evidence = {"log": log.name, "findtime_seconds": cfg.findtime_seconds, "maxretry": cfg.maxretry}
    if problem:
        evidence["nft"] = problem
    return Finding(
        check="access_log_clients",
        target=log.name,
        subject=ip,
        kind="access_client_hostile",
        severity=Severity.WARNING,
        observed=n,
        threshold=cfg.maxretry,
        evidence={**evidence, "read": read},
        summary=f"{ip}: {n} refusals (401/403/429) in {log.name} within {cfg.findtime_seconds}s",
    )


def _surge(
    cfg: AccessSettings, log: AccessLog, offenders: int, banned: int, read: dict[str, Any]
) -> Finding:
    return Finding(
        check="access_log_clients",
        target=log.name,
        kind="access_hostile_surge",
        severity=Severity.HIGH,
        observed=offenders,
        threshold=cfg.surge_offenders,
        evidence={"offenders": offenders, "banned_now": banned, "read": read},
        summary=f"{offenders} hostile clients in {log.name} within {cfg.findtime_seconds}s",
    )


def _unreadable(log: AccessLog, exc: OSError) -> Finding:
    return Finding(
        check="access_log_clients",
        target=log.name,
        kind="access_log_unreadable",
        severity=Severity.WARNING,
        evidence={"path": log.path, "error": f"{type(exc).__name__}: {exc.strerror or exc}"},
        summary=f"cannot read access log {log.name} ({log.path}): {exc.strerror or exc}",
    )


@check("access_log_clients")
def access_log_clients(ctx: CheckContext, params: AccessLogClientsParams) -> list[Finding]:
    """Clients refused (401/403/429) at least MAXRETRY times within FINDTIME_SECONDS in
    each REMEDIATION_ACCESS__LOGS file (runbook 003 "Review access logs"), like fail2ban.

    Each run reads what was appended since the last one (at most MAX_BYTES_PER_RUN, across
    rotation and truncation) and counts in the state Redis, so a window spans runs. A client
    over the limit whose ban is not in force everywhere (Redis, and the nft set when NFT is
    on) is access_client_hostile (subject: its address) and leads to block_ip; allow-listed
    networks (loopback, ALLOW_NETWORKS) never do. Hits before a client's last ban ended do
    not count again. SURGE_OFFENDERS distinct offenders in the window make one
    access_hostile_surge (high). A log that cannot be read is access_log_unreadable."""
    cfg = ctx.settings.access
    return [f for log in _logs(cfg, params.target) for f in _log_findings(ctx, cfg, log)]
