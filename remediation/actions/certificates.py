"""Runbook 001 "Monthly Operations 1. Security Updates": `certbot renew`, for a configured
certificate that the tls_certificates check found expiring.

The command comes from configuration only (REMEDIATION_CERTIFICATES__RENEW_COMMAND, or the
certificate's own renew_command): an argv list, no shell, run in its own process group,
killed whole at RENEW_TIMEOUT_SECONDS, with an environment that holds none of the worker's
settings. Its output is kept bounded and redacted. The endpoint is read again afterwards;
the runner's verification re-runs the check, which must no longer find it expiring.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from pydantic import Field

from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical, self_target
from remediation.security.bounded_run import run_bounded
from remediation.security.certificates import CertInfo, probe
from remediation.settings.certificates import CertificateTarget

TARGETS_VAR = "REMEDIATION_CERTIFICATES__TARGETS"


class RenewCertificateParams(ActionParams):
    certificate: str = Field(min_length=1, max_length=64, description=f"a name from {TARGETS_VAR}")


def _configured(ctx: CheckContext, name: str) -> CertificateTarget:
    cfg = ctx.settings.certificates
    for t in cfg.targets:
        if t.name.lower() == name.lower():
            return t
    known = ", ".join(t.name for t in cfg.targets[:20]) or "none"
    raise Refused(f"certificate {name[:64]!r} is not in {TARGETS_VAR} (known: {known})")


def resolve_certificate(ctx: CheckContext, params: RenewCertificateParams) -> Resolved:
    """Target "self" (the command runs on the worker that takes the call) and the configured
    certificate, spelled as configured. Refused: another target, a certificate that is not
    configured, or one whose renew command is empty (renewal disabled)."""
    target = self_target(params.target, "renew_certificate")
    cert = _configured(ctx, params.certificate)
    argv = ctx.settings.certificates.renew_argv(cert)
    if not argv:
        raise Refused(f"renewal of {cert.name} is disabled (its renew command is empty)")
    facts = {"program": os.path.basename(argv[0]), "endpoint": f"{cert.host}:{cert.port}"}
    return canonical(params, facts, target=target, certificate=cert.name)


def _resource(params: RenewCertificateParams) -> str:
    return f"certificate:{socket.gethostname()}:{params.certificate}"


def _state(info: CertInfo) -> dict[str, Any]:
    return {
        "not_after": info.not_after.isoformat() if info.not_after else None,
        "days_left": info.days_left(),
        "serial": info.serial or None,
        "error": info.error,
    }


@action(
    "renew_certificate",
    resolve=resolve_certificate,
    resource=_resource,
    timeout=timedelta(minutes=20),
    cooldown=timedelta(hours=1),
    max_per_hour=2,
)
def renew_certificate(ctx: ActionContext, params: RenewCertificateParams) -> ActionResult:
    """Run the renew command of one configured certificate (default `certbot renew
    --non-interactive`, runbook 001 "Monthly Operations 1. Security Updates").

    Only certificates in REMEDIATION_CERTIFICATES__TARGETS may be named; an empty
    renew_command refuses. The command (argv, no shell; its own renew_command or
    RENEW_COMMAND) runs in its own process group with none of the worker's settings in its
    environment, and is killed whole after RENEW_TIMEOUT_SECONDS; at most
    RENEW_OUTPUT_BYTES of its output are kept, redacted. The endpoint is read before and
    after; verification re-runs tls_certificates. Reloading the server that serves the
    certificate is the command's part (certbot --deploy-hook)."""
    cfg = ctx.settings.certificates
    cert = _configured(ctx, params.certificate)
    argv = cfg.renew_argv(cert)
    before = probe(cert, cfg)
    try:
        ran = run_bounded(argv, cfg.renew_timeout_seconds, output_limit=cfg.renew_output_bytes)
    except OSError as exc:
        return ActionResult(
            ok=False,
            changed=False,
            summary=f"renew command {os.path.basename(argv[0])} could not start: {type(exc).__name__}",
        )
    after = probe(cert, cfg)
    changed = (after.serial, after.not_after) != (before.serial, before.not_after)
    if ran.timed_out:
        how = f"killed after {cfg.renew_timeout_seconds:g}s (RENEW_TIMEOUT_SECONDS)"
    else:
        how = f"exited {ran.code} in {ran.seconds:.1f}s"
    new = f"; now expires {after.not_after:%Y-%m-%d}" if changed and after.not_after else ""
    return ActionResult(
        ok=ran.ok,
        changed=changed,
        summary=f"{ran.argv0} for {cert.name} {how}" + (new or "; certificate unchanged"),
        detail={
            "program": ran.argv0,
            "exit_code": ran.code,
            "timed_out": ran.timed_out,
            "seconds": ran.seconds,
            "output": ran.output,
            "output_cut": ran.cut,
            "before": _state(before),
            "after": _state(after),
        },
    )
