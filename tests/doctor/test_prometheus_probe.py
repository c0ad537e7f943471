"""The Prometheus probe against a real Prometheus (Debian's 2.42), started once for the module."""

from __future__ import annotations

from typing import Any

from remediation.doctor import prometheus as prom_probe
from remediation.doctor.needs import actions_for
from remediation.settings import DEFAULT_PROMETHEUS_RULES, Settings
from tests.support.alerting import Process
from tests.support.base import free_port


def _rule(name: str, query: str) -> dict[str, Any]:
    return {"name": name, "query": query, "kind": "error_rate_high", "warning": 0.1}


def test_default_rules_all_ok(prometheus_server: Process) -> None:
    """Against a real Prometheus every default rule is accepted: reachable plus one ok per rule."""
    rows = prom_probe.probe(Settings(prometheus={"url": prometheus_server.url}))
    assert [r.status for r in rows] == ["ok"] * (1 + len(DEFAULT_PROMETHEUS_RULES)), rows
    assert rows[0].what == "reachable"


def test_rule_with_typo_fails_naming_the_variable(prometheus_server: Process) -> None:
    """A rule with a PromQL typo is a fail row with Prometheus' parse error and the exact
    variable to correct; the good rule next to it stays ok."""
    rules = [_rule("good", "sum(up)"), _rule("typo", "sum(rate(http_requests_total[5m])")]
    rows = prom_probe.probe(Settings(prometheus={"url": prometheus_server.url, "rules": rules}))
    by_target = {r.target: r for r in rows}
    assert by_target["good"].status == "ok"
    bad = by_target["typo"]
    assert bad.status == "fail"
    assert bad.detail.startswith("bad_data: ") and "parse error" in bad.detail
    assert bad.fix == "correct REMEDIATION_PROMETHEUS__RULES[1].query (rule typo)"
    assert bad.needed_by == actions_for("error_rate_high") != ()


def test_unreachable_prometheus_is_one_fail_row() -> None:
    """A URL where nothing listens gives one fail row naming the variable, no password shown."""
    url = f"http://user:s3cret-pw@127.0.0.1:{free_port()}"
    rows = prom_probe.probe(Settings(prometheus={"url": url}))
    assert len(rows) == 1 and rows[0].status == "fail" and rows[0].what == "reachable"
    assert "REMEDIATION_PROMETHEUS__URL" in rows[0].fix
    assert "s3cret-pw" not in str(rows[0].as_dict())


def test_unset_url_is_ok_skip() -> None:
    """No Prometheus configured: one ok row saying the SLO rules are not checked."""
    rows = prom_probe.probe(Settings())
    assert [(r.status, r.what) for r in rows] == [("ok", "configured")]
