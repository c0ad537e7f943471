"""SLOs from Prometheus (runbook 002 error rates, latency and scraper failures; runbook 004
SLA violations; runbook 001 daily error-rate query; runbook 000 LLM quota).

Operators add rules in configuration (REMEDIATION_PROMETHEUS__RULES: name, PromQL query,
finding kind, warning/high/critical bands, direction) without writing Python. Each
series of a rule's result is compared on its own, so a rule ``by (source)`` reports the
one source that breaches.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import Field

from remediation.clients.prometheus import (
    PrometheusClient,
    PrometheusError,
    PrometheusHTTPError,
    PrometheusQueryError,
    PrometheusUnreachable,
    Sample,
)
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams, TargetName
from remediation.redact import redact_text
from remediation.registry import check
from remediation.settings import PrometheusRule

CHECK = "prometheus_slo"
MAX_FINDINGS_PER_RULE = 50
"""Breaching series reported per rule (the most severe first); the rest are logged."""
BANDS = (("critical", Severity.CRITICAL), ("high", Severity.HIGH), ("warning", Severity.WARNING))


class PrometheusSloParams(CheckParams):
    target: TargetName = Field("prometheus", description="names the findings; one Prometheus")
    rules: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=100, description="rule names to run; default: all"
    )


def _finding(
    params: PrometheusSloParams, subject: str, kind: str, sev: Severity, **kw: Any
) -> Finding:
    return Finding(
        check=CHECK, target=params.target, subject=subject, kind=kind, severity=sev, **kw
    )


def render_labels(labels: dict[str, str]) -> str:
    """{b="2",a="1"} -> '{a="1",b="2"}': sorted, so the subject (and fingerprint) is stable.
    Values are redacted: an instance label can hold a proxy URL with a password."""
    if not labels:
        return ""
    inner = ",".join(f'{k}="{redact_text(labels[k])}"' for k in sorted(labels))
    return "{" + inner + "}"


def breach(rule: PrometheusRule, value: float) -> tuple[Severity, float] | None:
    """The most severe band ``value`` is past (strictly), or None; unset bands are skipped."""
    for band, severity in BANDS:
        limit = getattr(rule, band)
        if limit is None:
            continue
        if (value > limit) if rule.direction == "above" else (value < limit):
            return severity, float(limit)
    return None


def number(value: float) -> float | str:
    """JSON (and so the audit's jsonb and Celery) has no infinity: write it as Prometheus does."""
    return value if math.isfinite(value) else ("+Inf" if value > 0 else "-Inf")


def _breach_finding(
    params: PrometheusSloParams,
    rule: PrometheusRule,
    sample: Sample,
    severity: Severity,
    limit: float,
) -> Finding:
    labels = render_labels(sample.labels)
    shown = f"{sample.value:.4g}" if math.isfinite(sample.value) else number(sample.value)
    return _finding(
        params,
        rule.name + labels,
        rule.kind,
        severity,
        observed=number(sample.value),
        threshold=limit,
        evidence={
            "rule": rule.name,
            "query": rule.query,
            "labels": {k: redact_text(v) for k, v in sample.labels.items()},
            "value": number(sample.value),
            "direction": rule.direction,
            "bands": {"warning": rule.warning, "high": rule.high, "critical": rule.critical},
            "description": rule.description,
        },
        summary=f"{rule.name}{labels} is {shown}, {rule.direction} {limit:g} ({severity.value})"
        + (f": {rule.description}" if rule.description else ""),
    )


def _evaluate(
    params: PrometheusSloParams, rule: PrometheusRule, samples: list[Sample], log: Any
) -> list[Finding]:
    hits = [(s, hit) for s in samples if (hit := breach(rule, s.value)) is not None]
    hits.sort(key=lambda pair: -pair[1][0].rank)
    if len(hits) > MAX_FINDINGS_PER_RULE:
        log.warning(
            "prometheus rule breached by more series than reported",
            rule=rule.name,
            series=len(hits),
            reported=MAX_FINDINGS_PER_RULE,
        )
    return [_breach_finding(params, rule, s, *hit) for s, hit in hits[:MAX_FINDINGS_PER_RULE]]


def _query_error(
    params: PrometheusSloParams, rule: PrometheusRule, exc: PrometheusError
) -> Finding:
    evidence: dict[str, Any] = {
        "rule": rule.name,
        "query": rule.query,
        "error_class": type(exc).__name__,
    }
    if isinstance(exc, PrometheusQueryError):
        evidence.update(error_type=exc.error_type, error=exc.error)
    return _finding(
        params,
        rule.name,
        "prometheus_query_error",
        Severity.WARNING,
        evidence=evidence,
        summary=f"rule {rule.name} could not be evaluated: {exc}",
    )


def _unreachable(
    params: PrometheusSloParams,
    client: PrometheusClient,
    exc: PrometheusError,
    rule: PrometheusRule,
) -> Finding:
    evidence: dict[str, Any] = {
        "url": client.safe_url,
        "error_class": type(exc).__name__,
        "error": str(exc),
        "rule": rule.name,
    }
    if isinstance(exc, PrometheusHTTPError):
        evidence["http_status"] = exc.status
    return _finding(
        params,
        "",
        "prometheus_unreachable",
        Severity.HIGH,
        evidence=evidence,
        summary=f"SLO rules not evaluated: {exc}",
    )


def _unconfigured(
    params: PrometheusSloParams, subject: str, summary: str, **evidence: Any
) -> Finding:
    return _finding(
        params,
        subject,
        "prometheus_unconfigured",
        Severity.INFO,
        evidence=evidence,
        summary=summary,
    )


def _selected(
    params: PrometheusSloParams, rules: list[PrometheusRule]
) -> tuple[list[PrometheusRule], list[str]]:
    if params.rules is None:
        return rules, []
    known = {rule.name for rule in rules}
    unknown = [name for name in params.rules if name not in known]
    return [rule for rule in rules if rule.name in params.rules], unknown


@check(CHECK)
def prometheus_slo(ctx: CheckContext, params: PrometheusSloParams) -> list[Finding]:
    """PromQL SLO rules from REMEDIATION_PROMETHEUS__RULES, each result series against
    its warning / high / critical bands (above or below).

    Shipped defaults are the runbooks' own signals: 5xx share > 5 / 10 / 20 % and P95
    latency > 1 / 2 / 5 s (runbook 002), scraper success < 80 % high, < 50 % critical
    (runbook 002), per-source success < 95 % and P99 latency (runbook 004 SLA),
    rate(scraper_errors_total[1h]) (runbook 001 daily check) and OpenAI 429 / quota errors
    (runbook 000). A breach is a finding of the rule's kind (error_rate_high, slo_breach,
    llm_quota_exhausted) per series; no data (empty result or NaN) is not a breach.
    Prometheus not answering is one prometheus_unreachable (high) for the run; a rule
    Prometheus rejects is prometheus_query_error (warning) and the other rules still run.
    Without REMEDIATION_PROMETHEUS__URL: one prometheus_unconfigured (info)."""
    cfg = ctx.settings.prometheus
    if not cfg.url:
        return [_unconfigured(params, "", "REMEDIATION_PROMETHEUS__URL is not set")]
    rules, unknown = _selected(params, cfg.rules)
    findings = [
        _unconfigured(
            params,
            name,
            f"no Prometheus rule named {name!r}",
            known=sorted(rule.name for rule in cfg.rules),
        )
        for name in unknown
    ]
    with PrometheusClient(cfg.url, cfg.timeout_seconds) as client:
        for rule in rules:
            try:
                samples = client.query(rule.query)
            except (PrometheusUnreachable, PrometheusHTTPError) as exc:
                # Every further rule would fail the same way (and wait out its timeout).
                findings.append(_unreachable(params, client, exc, rule))
                break
            except PrometheusError as exc:
                findings.append(_query_error(params, rule, exc))
                continue
            findings += _evaluate(params, rule, samples, ctx.log)
    return findings
