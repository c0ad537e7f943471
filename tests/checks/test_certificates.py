"""tls_certificates against a real TLS server on 127.0.0.1 serving certificates of a private
CA made here: expiry bands, expired, wrong name, untrusted, unreachable, SNI."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from remediation.checks.certificates import TlsCertificatesParams, tls_certificates
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import get_logger
from remediation.settings import Settings
from remediation.settings.certificates import CertificateSettings
from tests.support.base import free_port
from tests.support.tls import TlsServer, issue


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return str(tmp_path / "ca.pem")


@pytest.fixture
def server(ca: trustme.CA, tmp_path: Path) -> Iterator[TlsServer]:
    tls = TlsServer(issue(ca, "shop.test", days=90, folder=tmp_path, stem="live"))
    yield tls
    tls.stop()


def run(targets: list[dict[str, Any]], names: list[str] | None = None, **cfg: Any) -> list[Finding]:
    settings = Settings(certificates=CertificateSettings(targets=targets, **cfg))
    return tls_certificates(
        CheckContext(settings, get_logger()), TlsCertificatesParams(names=names)
    )


def shop(server: TlsServer, ca_file: str | None, **extra: Any) -> dict[str, Any]:
    target = {"name": "shop", "host": "127.0.0.1", "port": server.port, "server_name": "shop.test"}
    return {**target, "ca_file": ca_file, **extra}


def test_a_valid_certificate_far_from_expiry_has_no_findings(
    server: TlsServer, ca_file: str
) -> None:
    """90 days left, the right name, a trusted CA: nothing to report."""
    assert run([shop(server, ca_file)]) == []
    assert server.server_names[-1] == "shop.test"  # the server name went out as SNI


@pytest.mark.parametrize(
    ("days", "severity", "band"), [(20, "warning", 30), (10, "high", 14), (3, "critical", 7)]
)
def test_expiry_bands(
    ca: trustme.CA, server: TlsServer, ca_file: str, days: int, severity: str, band: int
) -> None:
    """Within 30 days a warning, within 14 high, within 7 critical, days left observed."""
    issue(ca, "shop.test", days=days, folder=server.cert_file.parent, stem="live")
    found = run([shop(server, ca_file)])
    assert [(f.kind, f.subject, f.severity.value, f.threshold) for f in found] == [
        ("certificate_expiring", "shop", severity, band)
    ]
    assert days - 1 < float(found[0].observed or 0) <= days
    assert found[0].evidence["verified"] is True


def test_configured_bands(ca: trustme.CA, server: TlsServer, ca_file: str) -> None:
    """WARNING_DAYS 60 makes 45 days a warning."""
    issue(ca, "shop.test", days=45, folder=server.cert_file.parent, stem="live")
    assert run([shop(server, ca_file)]) == []
    found = run([shop(server, ca_file)], warning_days=60)
    assert [(f.kind, f.severity.value) for f in found] == [("certificate_expiring", "warning")]


def test_an_expired_certificate_is_critical_and_read_anyway(
    ca: trustme.CA, server: TlsServer, ca_file: str
) -> None:
    """Past its date: certificate_expired (critical), its date read although it does not verify."""
    issue(ca, "shop.test", days=-2, folder=server.cert_file.parent, stem="live")
    found = run([shop(server, ca_file)])
    assert [(f.kind, f.severity.value) for f in found] == [("certificate_expired", "critical")]
    assert found[0].evidence["verify_error"] == "certificate has expired"
    assert -2.1 < found[0].evidence["days_left"] < -1.9


def test_a_certificate_for_another_name(ca: trustme.CA, server: TlsServer, ca_file: str) -> None:
    """A certificate not naming the server name is certificate_name_mismatch (high), listing
    the names it has; its expiry is still judged."""
    issue(ca, "other.test", days=10, folder=server.cert_file.parent, stem="live")
    found = {f.kind: f for f in run([shop(server, ca_file)])}
    assert set(found) == {"certificate_expiring", "certificate_name_mismatch"}
    assert found["certificate_name_mismatch"].severity.value == "high"
    assert found["certificate_name_mismatch"].evidence["dns_names"] == ["other.test"]
    assert "other.test" in found["certificate_name_mismatch"].summary


def test_an_unknown_ca_is_untrusted(server: TlsServer) -> None:
    """Without the private CA (the system's store only) the certificate is untrusted (high)."""
    found = run([shop(server, None)])
    assert [(f.kind, f.severity.value) for f in found] == [("certificate_untrusted", "high")]
    assert found[0].evidence["days_left"] > 89
    assert "unable to get local issuer" in found[0].evidence["verify_error"]


def test_the_section_ca_file_is_the_default(server: TlsServer, ca_file: str) -> None:
    """CA_FILE of the section trusts the private CA for targets without their own."""
    assert run([shop(server, None)], ca_file=ca_file) == []


def test_nothing_listening_is_unreachable() -> None:
    """A closed port: certificate_unreachable (high) naming the error."""
    target = {"name": "gone", "host": "127.0.0.1", "port": free_port()}
    found = run([target], timeout_seconds=2)
    assert [(f.kind, f.subject, f.severity.value) for f in found] == [
        ("certificate_unreachable", "gone", "high")
    ]
    assert "ConnectionRefusedError" in found[0].evidence["error"]


def test_names_narrow_the_run_and_unknown_names_are_info(server: TlsServer, ca_file: str) -> None:
    """names= probes only those (any case); a name not configured is certificate_unconfigured."""
    gone = {"name": "gone", "host": "127.0.0.1", "port": free_port()}
    found = run([shop(server, ca_file), gone], names=["SHOP", "nope"])
    assert [(f.kind, f.subject) for f in found] == [("certificate_unconfigured", "nope")]
    assert [f.kind for f in run([])] == ["certificate_unconfigured"]


class _Trickler:
    """Accepts one connection and starts a large ServerHello, then one byte every 50 ms (at
    most 1,200): a server that would hold a client forever on a per-read timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            try:
                conn.sendall(b"\x16\x03\x03\x40\x00\x02\x00\x3f\xfc")  # a 16 KiB ServerHello
                while self.sent < 1200 and not self.stop.wait(0.05):
                    conn.sendall(b"\x00")
                    self.sent += 1
            except OSError:
                return


def test_a_trickling_server_cannot_stretch_the_deadline() -> None:
    """One deadline covers connect and handshake: a server sending a byte every 50 ms is
    cut off at TIMEOUT_SECONDS (1 s here), not after its 60 s of bytes."""
    trickler = _Trickler()
    try:
        found = run(
            [{"name": "slow", "host": "127.0.0.1", "port": trickler.port}], timeout_seconds=1
        )
    finally:
        trickler.stop.set()
        trickler.thread.join(5)
        trickler.sock.close()
    assert [f.kind for f in found] == ["certificate_unreachable"]
    assert trickler.sent < 600  # cut long before the server ran out of bytes
