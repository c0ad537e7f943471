"""Prometheus (REMEDIATION_PROMETHEUS__URL): reachable, and every rule's query accepted.

Each rule of REMEDIATION_PROMETHEUS__RULES is run once as an instant query: Prometheus 2.42
has no ``/api/v1/parse_query``, and a query with a typo answers ``bad_data`` with the parse
error, which is exactly what the operator needs to see. The Alertmanager intake rules
(REMEDIATION_ALERTS__RULES) match labels, not expressions: nothing to check here.
"""

from __future__ import annotations

from remediation.clients.prometheus import (
    PrometheusClient,
    PrometheusError,
    PrometheusQueryError,
    PrometheusUnreachable,
)
from remediation.doctor import PROBE_TIMEOUT, Result, fail, ok
from remediation.doctor.needs import actions_for
from remediation.redact import redact_text
from remediation.settings import Settings

AREA = "prometheus"
URL_VAR = "REMEDIATION_PROMETHEUS__URL"
RULES_VAR = "REMEDIATION_PROMETHEUS__RULES"


def probe(settings: Settings) -> list[Result]:
    """Nothing when no URL is set (the check is off); else reachability, then one row per rule."""
    cfg = settings.prometheus
    if cfg.url is None:
        return [ok(AREA, "prometheus", "configured", f"{URL_VAR} unset: SLO rules not checked")]
    everyone = tuple(sorted({a for r in cfg.rules for a in actions_for(r.kind)}))
    timeout = min(cfg.timeout_seconds, PROBE_TIMEOUT)
    with PrometheusClient(cfg.url, timeout) as client:
        try:
            client.query("vector(1)")
        except PrometheusError as exc:
            fix = f"start Prometheus at {client.safe_url} or correct {URL_VAR}"
            why = redact_text(str(exc))
            return [fail(AREA, "prometheus", "reachable", why, fix, needed_by=everyone)]
        rows = [ok(AREA, "prometheus", "reachable", client.safe_url, needed_by=everyone)]
        for i, rule in enumerate(cfg.rules):
            rows.append(_rule(client, i, rule.name, rule.query, actions_for(rule.kind)))
            if rows[-1].detail.startswith("unreachable"):
                break  # it went away: one row says so, not one per rule
    return rows


def _rule(
    client: PrometheusClient, i: int, name: str, query: str, needed_by: tuple[str, ...]
) -> Result:
    what = f"rule {name} query accepted"
    fix = f"correct {RULES_VAR}[{i}].query (rule {name})"
    try:
        samples = client.query(query)
    except PrometheusUnreachable as exc:
        why = f"unreachable: {redact_text(str(exc))}"
        return fail(
            AREA, name, what, why, f"start Prometheus or correct {URL_VAR}", needed_by=needed_by
        )
    except PrometheusQueryError as exc:
        why = f"{exc.error_type}: {redact_text(exc.error)}"
        return fail(AREA, name, what, why, fix, needed_by=needed_by)
    except PrometheusError as exc:
        return fail(AREA, name, what, redact_text(str(exc)), fix, needed_by=needed_by)
    return ok(AREA, name, what, f"{len(samples)} series now", needed_by=needed_by)
