"""Runbook 004 "Security Check Failures": IBKR FA account ids (and other secrets) in logs.

The runbook's `grep -i "fa=" /var/log/autotrader/*.log`, done incrementally: each run reads
only what was written since the last one (remediation.security.log_scan), and re-reads the
lines that leaked until they are gone. Findings name the file, line numbers and pattern
names, never the secret.
"""

from __future__ import annotations

from remediation import restarts
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check
from remediation.security import app_config, log_scan
from remediation.security.log_patterns import pattern_set
from remediation.settings import LogSecretsSettings

MAX_LINES_LISTED = 20


class LogSecretsParams(CheckParams):
    """Files and patterns come from REMEDIATION_SECRETS__*; target only names the host."""


def _leak(params: LogSecretsParams, scan: log_scan.FileScan, cut: bool) -> Finding:
    counts: dict[str, int] = {}
    for leak in scan.present:
        for name in leak.patterns:
            counts[name] = counts.get(name, 0) + 1
    lines = [k.line for k in scan.present]
    total = len(scan.present) + scan.overflow
    shown = ", ".join(str(n) for n in lines[:5]) + (" ..." if len(lines) > 5 else "")
    return Finding(
        check="log_secrets",
        target=params.target,
        subject=scan.path,
        kind="log_secret_leaked",
        severity=Severity.CRITICAL,
        observed=total,
        threshold=0,
        evidence={
            "file": scan.path,
            "inode": scan.ident,
            "lines": lines[:MAX_LINES_LISTED],
            "leaking_lines": total,
            "new_lines": len(scan.new),
            "patterns": sorted(counts.items()),  # pairs: a dict key "url_password" is masked
            "scanned_from": scan.start,
            "scanned_to": scan.offset,
            "bytes_behind": scan.behind,
            "scan_cut_short": cut,
        },
        summary=(
            f"{total} line(s) of {scan.path} hold secrets ({', '.join(sorted(counts))}):"
            f" line {shown}"
        ),
    )


def _behind(params: LogSecretsParams, scans: list[log_scan.FileScan]) -> Finding:
    behind = {s.path: s.behind for s in scans if s.behind}
    return Finding(
        check="log_secrets",
        target=params.target,
        kind="log_scan_incomplete",
        severity=Severity.INFO,
        observed=sum(behind.values()),
        evidence={"bytes_behind": dict(list(behind.items())[:MAX_LINES_LISTED])},
        summary=f"scan cut short at REMEDIATION_SECRETS__MAX_BYTES_PER_RUN: {len(behind)}"
        " file(s) continue next run",
    )


def _unreadable(params: LogSecretsParams, scan: log_scan.FileScan) -> Finding:
    return Finding(
        check="log_secrets",
        target=params.target,
        subject=scan.path,
        kind="log_scan_unreadable",
        severity=Severity.WARNING,
        evidence={"error": scan.error},
        summary=f"cannot read {scan.path}: {scan.error}",
    )


def _scrubbing(
    ctx: CheckContext, params: LogSecretsParams, cfg: LogSecretsSettings
) -> list[Finding]:
    """log_scrubbing_off while a leak was seen recently and the flag is not on;
    log_scrubbing_restart_due while the restart asked for after turning it on is not done."""
    found: list[Finding] = []
    if cfg.app_config and ctx.state.exists(log_scan.LEAK_SEEN):
        try:
            on = app_config.flag(cfg.app_config, cfg.scrub_key)
        except app_config.ConfigFileError as exc:
            on, error = False, str(exc)
        else:
            error = ""
        if not on:
            found.append(
                Finding(
                    check="log_secrets",
                    target=params.target,
                    subject=cfg.app_config,
                    kind="log_scrubbing_off",
                    severity=Severity.HIGH,
                    evidence={"file": cfg.app_config, "key": cfg.scrub_key, "error": error},
                    summary=f"secrets leaked to logs and {cfg.scrub_key} is not true in"
                    f" {cfg.app_config}",
                )
            )
    if cfg.app_container and restarts.requested(ctx.state, cfg.app_container):
        found.append(
            Finding(
                check="log_secrets",
                target=params.target,
                subject=cfg.app_container,
                kind="log_scrubbing_restart_due",
                severity=Severity.HIGH,
                evidence={"container": cfg.app_container, "key": cfg.scrub_key},
                summary=f"{cfg.app_container} must restart to read {cfg.scrub_key}",
            )
        )
    return found


def _skipped(params: LogSecretsParams, paths: list[str]) -> Finding:
    return Finding(
        check="log_secrets",
        target=params.target,
        kind="log_scan_skipped",
        severity=Severity.WARNING,
        observed=len(paths),
        evidence={"paths": paths[:MAX_LINES_LISTED]},
        summary=f"{len(paths)} path(s) matched by REMEDIATION_SECRETS__FILES not scanned:"
        " symlinks (or reached through one) are never followed",
    )


def scan_all(
    ctx: CheckContext, cfg: LogSecretsSettings
) -> tuple[list[log_scan.FileScan], list[str]]:
    """One run over the configured files, and the paths the globs matched that are not
    scanned. Each file gets an equal share of the byte budget; what the files that were
    caught up left over goes to those still behind, in order."""
    pset = pattern_set(cfg.patterns, cfg.disabled_patterns)
    files, skipped = log_scan.matched_files(cfg.files, cfg.max_files, cfg.quarantine_dir)
    share = max(cfg.max_bytes_per_run // max(len(files), 1), cfg.max_line_bytes)
    ttl = int(cfg.state_ttl_days * 86400)
    scans = [
        log_scan.scan_file(ctx.state, pset, path, share, cfg.max_line_bytes, ttl) for path in files
    ]
    left = cfg.max_bytes_per_run - sum(s.offset - s.start for s in scans)
    for i, first in enumerate(scans):
        if left < cfg.max_line_bytes:
            break
        if first.behind and not first.error:
            more = log_scan.scan_file(ctx.state, pset, first.path, left, cfg.max_line_bytes, ttl)
            if more.ident == first.ident:  # still the same file: one result for the run
                left -= more.offset - more.start
                more.new = first.new + more.new
                more.start, more.restarted = first.start, first.restarted
                scans[i] = more
    return scans, skipped


@check("log_secrets")
def log_secrets(ctx: CheckContext, params: LogSecretsParams) -> list[Finding]:
    """Secrets in the log files of REMEDIATION_SECRETS__FILES (runbook 004 "Security Check
    Failures": grep -i "fa=" /var/log/autotrader/*.log).

    Reads what was written since the last run (at most MAX_BYTES_PER_RUN over all files),
    by inode and offset: a rotated file is not read again, a truncated one starts over.
    Looks for IBKR FA fields and account ids, AWS/GitHub/Slack/Stripe keys, bearer tokens,
    passwords in URLs, key=value secrets and the operator's PATTERNS. A file with secrets
    is log_secret_leaked (critical; file, line numbers, pattern names: never the secret)
    until they are gone from it; quarantine_log copies it aside and masks them. While a
    leak was seen in the last 7 days and APP_CONFIG's SCRUB_KEY is not true:
    log_scrubbing_off (enable_log_scrubbing); then log_scrubbing_restart_due until
    APP_CONTAINER restarted. A cut-short scan is log_scan_incomplete (info); paths not
    scanned (symlinks: never followed) are log_scan_skipped."""
    cfg = ctx.settings.secrets
    scans, skipped = scan_all(ctx, cfg)
    cut = any(s.behind for s in scans)
    findings: list[Finding] = []
    for scan in scans:
        if scan.error:
            findings.append(_unreadable(params, scan))
        elif scan.present:
            findings.append(_leak(params, scan, cut))
    if cut:
        findings.append(_behind(params, scans))
    if skipped:
        findings.append(_skipped(params, skipped))
    return findings + _scrubbing(ctx, params, cfg)
