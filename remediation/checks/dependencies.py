"""Runbooks 003 "Update Dependencies" (`safety check`) and 004 "Dependency Vulnerabilities"
(`pip-audit`): known vulnerabilities in configured requirement files and environments.

Reported, never fixed: the runbook says to test an upgrade before it reaches production, so
the playbook only notifies, with the versions that fix each advisory.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from pydantic import Field

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams, TargetName
from remediation.registry import check
from remediation.security.dependencies import (
    MAX_ADVISORIES,
    MAX_SKIPPED_LISTED,
    Scan,
    Vulnerable,
    scan_source,
)
from remediation.settings import DependencySettings
from remediation.settings.dependencies import DependencySource

CHECK = "python_dependencies"
SOURCES_VAR = "REMEDIATION_DEPENDENCIES__SOURCES"
MAX_VULNERABLE_REPORTED = 200
"""Vulnerable packages reported per source (one finding each); the rest are counted."""


class PythonDependenciesParams(CheckParams):
    target: TargetName = Field("dependencies", description="names the findings")
    sources: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=100, description=f"names from {SOURCES_VAR}; default: all"
    )


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _severity(cfg: DependencySettings, source: DependencySource, package: str) -> Severity:
    by_package = {_canonical(k): v for k, v in cfg.package_severity.items()}
    return Severity(by_package.get(_canonical(package)) or source.severity or cfg.severity)


def _summary(source: str, v: Vulnerable) -> str:
    ids = ", ".join(v.ids[:5]) + (f" and {len(v.ids) - 5} more" if len(v.ids) > 5 else "")
    fixed = v.fixed_versions
    if v.upgrade_to:
        fix = f"upgrade to {v.upgrade_to} (fixed in {', '.join(fixed[:8])})"
    elif fixed:
        fix = f"fixed in {', '.join(fixed[:8])}; some advisories have no fix yet"
    else:
        fix = "no fixed version published yet"
    return f"{v.name} {v.version} in {source}: {len(v.ids)} advisory(ies) ({ids}); {fix}"


def _vulnerable(
    params: PythonDependenciesParams, cfg: DependencySettings, src: DependencySource, v: Vulnerable
) -> Finding:
    return Finding(
        check=CHECK,
        target=params.target,
        subject=f"{src.name}/{v.name}",
        kind="dependency_vulnerable",
        severity=_severity(cfg, src, v.name),
        observed=len(v.advisories),
        evidence={
            "source": src.name,
            "package": v.name,
            "version": v.version,
            "advisories": [a.__dict__ for a in v.advisories[:MAX_ADVISORIES]],
            "fixed_versions": v.fixed_versions,
            "upgrade_to": v.upgrade_to,
        },
        summary=_summary(src.name, v),
    )


def _failed(params: PythonDependenciesParams, scan: Scan) -> Finding:
    return Finding(
        check=CHECK,
        target=params.target,
        subject=scan.source,
        kind="dependency_scan_failed",
        severity=Severity.HIGH,
        evidence={
            "source": scan.source,
            "error": scan.error,
            "exit_code": scan.exit_code,
            "seconds": scan.seconds,
            "skipped": [list(s) for s in scan.skipped[:MAX_SKIPPED_LISTED]],
        },
        summary=f"dependency scan of {scan.source} did not run, vulnerabilities unknown: {scan.error}",
    )


def _findings(
    params: PythonDependenciesParams, cfg: DependencySettings, src: DependencySource, scan: Scan
) -> list[Finding]:
    if not scan.ok:
        return [_failed(params, scan)]
    found = [_vulnerable(params, cfg, src, v) for v in scan.vulnerable[:MAX_VULNERABLE_REPORTED]]
    if scan.skipped:
        found.append(
            Finding(
                check=CHECK,
                target=params.target,
                subject=src.name,
                kind="dependency_scan_incomplete",
                severity=Severity.INFO,
                observed=len(scan.skipped),
                evidence={
                    "source": src.name,
                    "audited": scan.audited,
                    "skipped": [list(s) for s in scan.skipped[:MAX_SKIPPED_LISTED]],
                    "unreported_vulnerable": max(0, len(scan.vulnerable) - MAX_VULNERABLE_REPORTED),
                },
                summary=f"{len(scan.skipped)} package(s) of {src.name} could not be audited",
            )
        )
    return found


def _unconfigured(
    params: PythonDependenciesParams, subject: str, why: str, **extra: Any
) -> Finding:
    return Finding(
        check=CHECK,
        target=params.target,
        subject=subject,
        kind="dependency_unconfigured",
        severity=Severity.INFO,
        evidence={"reason": why, **extra},
        summary=why,
    )


@check(CHECK)
def python_dependencies(ctx: CheckContext, params: PythonDependenciesParams) -> list[Finding]:
    """Known vulnerabilities in each REMEDIATION_DEPENDENCIES__SOURCES entry, by pip-audit
    (runbook 004 "Dependency Vulnerabilities", 003 "Update Dependencies").

    One dependency_vulnerable per vulnerable package (SEVERITY, high by default; per package
    PACKAGE_SEVERITY) with its advisory ids and the versions that fix them. Requirement
    files are audited pinned, without resolving anything; an environment as installed. A
    scan that could not run (advisory service unreachable, every package skipped, nothing
    found, timeout) is dependency_scan_failed (high), never a clean result; some packages
    skipped is dependency_scan_incomplete (info). All sources share one deadline,
    TIMEOUT_SECONDS. Nothing is upgraded: the playbook notifies."""
    cfg = ctx.settings.dependencies
    if not cfg.sources:
        return [_unconfigured(params, "", f"{SOURCES_VAR} is empty")]
    known = [s.name for s in cfg.sources]
    findings = [
        _unconfigured(params, name, f"no dependency source named {name!r}", known=known)
        for name in params.sources or []
        if name not in known
    ]
    deadline = time.monotonic() + cfg.timeout_seconds
    for src in cfg.sources:
        if params.sources is not None and src.name not in params.sources:
            continue
        left = deadline - time.monotonic()
        if left < 1:
            scan = Scan(
                src.name,
                error=f"not scanned: TIMEOUT_SECONDS ({cfg.timeout_seconds:g}s) spent on earlier sources",
            )
        else:
            scan = scan_source(src, cfg, left)
        ctx.log.info(
            "dependency scan",
            source=src.name,
            ok=scan.ok,
            vulnerable=len(scan.vulnerable),
            seconds=scan.seconds,
        )
        findings += _findings(params, cfg, src, scan)
    return findings
