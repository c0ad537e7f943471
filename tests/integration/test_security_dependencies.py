"""Issue 13, vulnerable dependencies, end to end through a real worker: pip-audit audits a
pinned requirements file against a local OSV advisory service on 127.0.0.1; a vulnerable
package is one finding that notifies a human with the versions that fix it; an advisory
service that fails is a failed scan (notified), never "no known vulnerabilities"."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.advisories import OsvServer, advisory
from tests.support.base import wait_for
from tests.support.own_stack import OwnStack, own_stack
from tests.support.rabbitmq import Broker

SLOT = 31  # the RabbitMQ vhost of this module


@pytest.fixture(scope="module")
def osv() -> Iterator[OsvServer]:
    server = OsvServer(
        {
            ("requests", "2.0.0"): [
                advisory("PYSEC-2014-13", "requests", ["2.3.0"], ["CVE-2014-1829"]),
                advisory("GHSA-j8r2-6x86-q33q", "requests", ["2.31.0"]),
            ]
        }
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(
    broker: Broker, pg_admin: str, osv: OsvServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OwnStack]:
    folder = tmp_path_factory.mktemp("deps")
    requirements = folder / "requirements.txt"
    requirements.write_text("requests==2.0.0\nsix==1.16.0\n")
    sources = [{"name": "app", "requirements": [str(requirements)]}]
    with own_stack(
        broker,
        pg_admin,
        "deps",
        SLOT,
        REMEDIATION_DEPENDENCIES__SOURCES=json.dumps(sources),
        REMEDIATION_DEPENDENCIES__SERVICE="osv",
        REMEDIATION_DEPENDENCIES__OSV_URL=osv.url,
        REMEDIATION_DEPENDENCIES__TIMEOUT_SECONDS="120",
    ) as s:
        yield s


def test_a_vulnerable_package_is_notified_with_its_fixed_versions(
    stack: OwnStack, osv: OsvServer
) -> None:
    """check run -> one dependency_vulnerable finding (requests, both advisories) -> notify
    admitted and sent, its text naming the advisories and the version that fixes them all."""
    osv.fail_status = None
    stack.run_check("python_dependencies", target="dependencies")
    chain = stack.audit.wait_rows(
        "SELECT c.status, f.kind, f.subject, f.severity, f.evidence, g.decision,"
        " a.outcome, a.params FROM check_runs c JOIN findings f ON f.check_run_id = c.id"
        " JOIN guard_decisions g ON g.finding_id = f.id JOIN action_runs a ON a.decision_id = g.id"
        " WHERE c.check_name = 'python_dependencies' AND f.kind = 'dependency_vulnerable'"
        " AND a.action = 'notify'"
    )
    assert len(chain) == 1  # six has no advisory: one finding, one notification
    row = chain[0]
    assert (row["status"], row["subject"], row["severity"]) == ("ok", "app/requests", "high")
    assert (row["decision"], row["outcome"]) == ("admitted", "succeeded")
    assert [a["id"] for a in row["evidence"]["advisories"]] == [
        "PYSEC-2014-13",
        "GHSA-j8r2-6x86-q33q",
    ]
    assert row["evidence"]["fixed_versions"] == ["2.3.0", "2.31.0"]
    assert row["evidence"]["upgrade_to"] == "2.31.0"
    text = row["params"]["text"]
    assert "PYSEC-2014-13" in text and "upgrade to 2.31.0" in text
    wait_for(
        lambda: any("upgrade to 2.31.0" in b.get("text", "") for b in stack.webhook.bodies),
        30,
        0.2,
        "the notification at the webhook",
    )
    assert {q["package"]["name"] for q in osv.queries} >= {"requests", "six"}


def test_a_failing_advisory_service_is_a_failed_scan_never_a_clean_one(
    stack: OwnStack, osv: OsvServer
) -> None:
    """With the advisory service answering 503 the check reports dependency_scan_failed
    (high) and no package as clean or vulnerable; the failure is notified."""
    osv.fail_status = 503
    try:
        stack.run_check("python_dependencies", target="dependencies")
    finally:
        osv.fail_status = None
    rows = stack.audit.wait_rows(
        "SELECT f.check_run_id, f.severity, f.evidence, a.outcome, a.params FROM findings f"
        " JOIN action_runs a ON a.finding_id = f.id"
        " WHERE f.kind = 'dependency_scan_failed' AND a.action = 'notify'"
    )
    assert (rows[0]["severity"], rows[0]["outcome"]) == ("high", "succeeded")
    assert "unreachable or failing" in rows[0]["evidence"]["error"]
    assert "vulnerabilities unknown" in rows[0]["params"]["text"]
    same_run = stack.audit.rows(
        "SELECT kind FROM findings WHERE check_run_id = %s", rows[0]["check_run_id"]
    )
    assert [r["kind"] for r in same_run] == ["dependency_scan_failed"]
