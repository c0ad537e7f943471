"""`remediation certificates` against real TLS servers on 127.0.0.1 (certificates of a
private CA made here): each configured certificate with its expiry and state, read-only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trustme

from remediation.cli import main
from tests.support.base import free_port
from tests.support.tls import TlsServer, issue


def test_certificates_lists_each_endpoint_with_its_state(
    settings_env: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A healthy, an expiring and an unreachable endpoint: ok, expiring (days left), unreachable;
    the human table names them too."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    good = TlsServer(issue(ca, "good.test", days=80, folder=tmp_path, stem="good"))
    soon = TlsServer(issue(ca, "soon.test", days=10, folder=tmp_path, stem="soon"))
    targets = [
        {"name": "good", "host": "127.0.0.1", "port": good.port, "server_name": "good.test"},
        {"name": "soon", "host": "127.0.0.1", "port": soon.port, "server_name": "soon.test"},
        {"name": "gone", "host": "127.0.0.1", "port": free_port()},
    ]
    try:
        settings_env(
            REMEDIATION_CERTIFICATES__TARGETS=json.dumps(targets),
            REMEDIATION_CERTIFICATES__CA_FILE=str(tmp_path / "ca.pem"),
        )
        assert main(["--json", "certificates"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["certificates"]}
        assert main(["certificates"]) == 0
        human = capsys.readouterr().out
    finally:
        good.stop()
        soon.stop()
    assert {n: r["state"] for n, r in rows.items()} == {
        "good": "ok",
        "soon": "expiring",
        "gone": "unreachable",
    }
    assert 9 < rows["soon"]["days_left"] <= 10 and rows["good"]["verified"] is True
    assert "ConnectionRefusedError" in rows["gone"]["reason"]
    assert "expiring" in human and "soon.test" in human
