"""Issue 13, certificates, end to end through a real worker: a local TLS server on 127.0.0.1
serves a certificate of a private CA five days from expiry; the check finds it critical,
renew_certificate runs the configured renew command (a script written here that installs a
fresh certificate), and the verification reads the endpoint again: recovered."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.support.base import wait_for
from tests.support.own_stack import OwnStack, own_stack
from tests.support.rabbitmq import Broker
from tests.support.tls import TlsServer, issue

SLOT = 32  # the RabbitMQ vhost of this module
RENEW = """
import os, shutil, sys
fresh, live, runs = sys.argv[1:4]
with open(runs, "a") as fh:
    fh.write("run\\n")
shutil.copyfile(fresh, live + ".new")
os.replace(live + ".new", live)
print("renewed", live)
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    script = folder / "renew.py"
    script.write_text(RENEW)
    return {
        "folder": folder,
        "ca": folder / "ca.pem",
        "live": issue(ca, "shop.test", days=5, folder=folder, stem="live"),
        "fresh": issue(ca, "shop.test", days=90, folder=folder, stem="fresh"),
        "script": script,
        "runs": folder / "runs.txt",
    }


@pytest.fixture(scope="module")
def server(certs: dict[str, Path]) -> Iterator[TlsServer]:
    tls = TlsServer(certs["live"])
    yield tls
    tls.stop()


@pytest.fixture(scope="module")
def stack(
    broker: Broker, pg_admin: str, certs: dict[str, Path], server: TlsServer
) -> Iterator[OwnStack]:
    targets = [
        {
            "name": "shop",
            "host": "127.0.0.1",
            "port": server.port,
            "server_name": "shop.test",
            "ca_file": str(certs["ca"]),
        }
    ]
    command = f"{sys.executable} {certs['script']} {certs['fresh']} {certs['live']} {certs['runs']}"
    with own_stack(
        broker,
        pg_admin,
        "certs",
        SLOT,
        REMEDIATION_CERTIFICATES__TARGETS=json.dumps(targets),
        REMEDIATION_CERTIFICATES__RENEW_COMMAND=command,
        REMEDIATION_CERTIFICATES__RENEW_TIMEOUT_SECONDS="60",
    ) as s:
        yield s


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].serial_number


def test_a_near_expiry_certificate_is_renewed_and_verified_recovered(
    stack: OwnStack, certs: dict[str, Path], server: TlsServer
) -> None:
    """check run -> certificate_expiring (critical) -> renew_certificate admitted, the renew
    command installs the fresh certificate -> verification connects again: recovered."""
    stack.run_check("tls_certificates", target="certificates")
    chain = stack.audit.wait_rows(
        "SELECT c.status, f.kind, f.subject, f.severity, f.observed, g.decision, a.outcome,"
        " a.result, a.verification FROM check_runs c JOIN findings f ON f.check_run_id = c.id"
        " JOIN guard_decisions g ON g.finding_id = f.id JOIN action_runs a ON a.decision_id = g.id"
        " WHERE c.check_name = 'tls_certificates' AND a.action = 'renew_certificate'"
        " AND a.verification IS NOT NULL",
        timeout=120,
    )
    assert len(chain) == 1
    row = chain[0]
    assert (row["status"], row["kind"], row["subject"]) == ("ok", "certificate_expiring", "shop")
    assert row["severity"] == "critical" and 4 < float(row["observed"]) <= 5
    assert (row["decision"], row["outcome"], row["verification"]) == (
        "admitted",
        "succeeded",
        "recovered",
    )
    detail = row["result"]["detail"]
    assert detail["exit_code"] == 0 and "renewed" in detail["output"]
    assert detail["before"]["days_left"] <= 5 and detail["after"]["days_left"] > 89
    assert int(detail["after"]["serial"], 16) == _serial(certs["fresh"])
    assert _serial(certs["live"]) == _serial(certs["fresh"])
    assert certs["runs"].read_text().count("run") == 1
    verify = stack.audit.rows(
        "SELECT v.purpose, v.findings_count FROM action_runs a"
        " JOIN check_runs v ON v.id = a.verify_check_run_id WHERE a.action = 'renew_certificate'"
    )
    assert verify == [{"purpose": "verify", "findings_count": 0}]
    wait_for(
        lambda: any("shop" in b.get("text", "") for b in stack.webhook.bodies),
        30,
        0.2,
        "the critical expiry notified",
    )


def test_a_certificate_not_configured_is_refused_and_nothing_runs(
    stack: OwnStack, certs: dict[str, Path]
) -> None:
    """renew_certificate by hand for a name not in TARGETS is refused before any guard, with
    its reason; the renew command does not run."""
    before = certs["runs"].read_text() if certs["runs"].exists() else ""
    out = stack.client.send_task(
        "remediation.act.renew_certificate",
        kwargs={"target": "self", "certificate": "not-ours"},
    ).get(timeout=60)
    assert out["outcome"] == "refused", out
    rows = stack.audit.wait_rows(
        "SELECT decision, guard, reason FROM guard_decisions WHERE action = 'renew_certificate'"
        " AND decision = 'refused'"
    )
    assert len(rows) == 1 and rows[0]["guard"] == "resolve"  # before any guard
    assert "not in REMEDIATION_CERTIFICATES__TARGETS" in rows[0]["reason"]
    after = certs["runs"].read_text() if certs["runs"].exists() else ""
    assert after == before
