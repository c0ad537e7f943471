"""Runbook 001 "Monthly Operations 1. Security Updates" (`certbot renew`): the certificates
of configured TLS endpoints, read over the network as clients see them.

Each REMEDIATION_CERTIFICATES__TARGETS entry is connected to with its server name as SNI.
Expiry closer than WARNING_DAYS / HIGH_DAYS / CRITICAL_DAYS (30 / 14 / 7) is
certificate_expiring; renew_certificate runs the renew command on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from pydantic import Field

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams, TargetName
from remediation.registry import check
from remediation.security.certificates import CertInfo, band, probe
from remediation.settings import CertificateSettings
from remediation.settings.certificates import CertificateTarget

CHECK = "tls_certificates"
TARGETS_VAR = "REMEDIATION_CERTIFICATES__TARGETS"


class TlsCertificatesParams(CheckParams):
    target: TargetName = Field("certificates", description="names the findings")
    names: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=200, description=f"names from {TARGETS_VAR}; default: all"
    )


def _evidence(t: CertificateTarget, info: CertInfo) -> dict[str, Any]:
    return {
        "host": t.host,
        "port": t.port,
        "server_name": t.expected_name,
        "not_after": info.not_after.isoformat() if info.not_after else None,
        "not_before": info.not_before.isoformat() if info.not_before else None,
        "days_left": info.days_left(),
        "subject": info.subject,
        "issuer": info.issuer,
        "serial": info.serial,
        "dns_names": info.dns_names,
        "verified": info.verified,
        "verify_code": info.verify_code,
        "verify_error": info.verify_message or None,
        "name_matches": info.name_matches,
        "error": info.error,
    }


class _Judge:
    """The findings of one probe."""

    def __init__(
        self,
        params: TlsCertificatesParams,
        cfg: CertificateSettings,
        t: CertificateTarget,
        info: CertInfo,
    ) -> None:
        self.params, self.cfg, self.t, self.info = params, cfg, t, info
        self.where = f"{t.expected_name} ({t.host}:{t.port})"

    def finding(self, kind: str, severity: Severity, summary: str, **kw: Any) -> Finding:
        return Finding(
            check=CHECK,
            target=self.params.target,
            subject=self.t.name,
            kind=kind,
            severity=severity,
            evidence=_evidence(self.t, self.info),
            summary=summary,
            **kw,
        )

    def findings(self) -> list[Finding]:
        info = self.info
        if info.error is not None:
            return [
                self.finding(
                    "certificate_unreachable",
                    Severity.HIGH,
                    f"cannot read the certificate of {self.where}: {info.error}",
                )
            ]
        found = self._expiry()
        if not info.name_matches:
            found.append(
                self.finding(
                    "certificate_name_mismatch",
                    Severity.HIGH,
                    f"the certificate of {self.where} does not name {self.t.expected_name} (it names {', '.join(info.dns_names[:5]) or info.subject})",
                )
            )
        if info.untrusted:
            found.append(
                self.finding(
                    "certificate_untrusted",
                    Severity.HIGH,
                    f"the certificate of {self.where} does not verify: {info.verify_message}",
                )
            )
        return found

    def _expiry(self) -> list[Finding]:
        days = self.info.days_left()
        assert days is not None and self.info.not_after is not None
        when = self.info.not_after.strftime("%Y-%m-%d %H:%M UTC")
        if days <= 0:
            return [
                self.finding(
                    "certificate_expired",
                    Severity.CRITICAL,
                    f"the certificate of {self.where} expired {when}",
                    observed=days,
                    threshold=0,
                )
            ]
        hit = band(days, self.cfg)
        if hit is None:
            return []
        return [
            self.finding(
                "certificate_expiring",
                hit[0],
                f"the certificate of {self.where} expires {when}, in {days:.1f} days",
                observed=days,
                threshold=hit[1],
            )
        ]


@check(CHECK)
def tls_certificates(ctx: CheckContext, params: TlsCertificatesParams) -> list[Finding]:
    """Expiry, name and trust of each REMEDIATION_CERTIFICATES__TARGETS endpoint's certificate
    (runbook 001 "Monthly Operations 1. Security Updates": certbot renew).

    Connects with the server name as SNI and reads the certificate even when it does not
    verify. Expiring within WARNING_DAYS (30) is certificate_expiring, a warning; within
    HIGH_DAYS (14) high; within CRITICAL_DAYS (7) critical; past its date
    certificate_expired (critical): renew_certificate runs the renew command. Not naming
    the server name: certificate_name_mismatch; not verifying against CA_FILE (or the
    system's store) for another reason: certificate_untrusted; no TLS answer within
    TIMEOUT_SECONDS: certificate_unreachable (all high, notified)."""
    cfg = ctx.settings.certificates
    if not cfg.targets:
        return [_unconfigured(params, "", f"{TARGETS_VAR} is empty")]
    known = {t.name.lower(): t for t in cfg.targets}
    wanted_names = None if params.names is None else {n.lower() for n in params.names}
    findings = [
        _unconfigured(
            params, n, f"no certificate named {n!r}", known=sorted(t.name for t in cfg.targets)
        )
        for n in params.names or []
        if n.lower() not in known
    ]
    wanted = [t for t in cfg.targets if wanted_names is None or t.name.lower() in wanted_names]
    if wanted:
        with ThreadPoolExecutor(
            min(cfg.workers, len(wanted)), thread_name_prefix="tls-probe"
        ) as pool:
            infos = list(pool.map(lambda t: probe(t, cfg), wanted))
        for t, info in zip(wanted, infos, strict=True):
            findings += _Judge(params, cfg, t, info).findings()
    return findings


def _unconfigured(params: TlsCertificatesParams, subject: str, why: str, **extra: Any) -> Finding:
    return Finding(
        check=CHECK,
        target=params.target,
        subject=subject,
        kind="certificate_unconfigured",
        severity=Severity.INFO,
        evidence={"reason": why, **extra},
        summary=why,
    )
