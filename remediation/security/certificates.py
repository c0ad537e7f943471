"""What a TLS endpoint's certificate says: expiry, names, and whether it verifies.

A probe connects twice at most: once verifying (trust, name and dates, as a client would),
and, when that fails, once more without verifying, so the certificate is read and its
expiry and names reported whatever is wrong with it. The server name goes out as SNI.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from remediation.findings import Severity
from remediation.settings import CertificateSettings
from remediation.settings.certificates import CertificateTarget

_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED
_NOT_YET_VALID = 9  # X509_V_ERR_CERT_NOT_YET_VALID
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_IP_MISMATCH = 64  # X509_V_ERR_IP_ADDRESS_MISMATCH


@dataclass
class CertInfo:
    """One probe of one configured endpoint."""

    name: str
    error: str | None = None  # could not connect or complete a handshake at all
    not_after: datetime | None = None
    not_before: datetime | None = None
    subject: str = ""
    issuer: str = ""
    dns_names: list[str] = field(default_factory=list)
    serial: str = ""
    verified: bool = False
    verify_code: int | None = None
    verify_message: str = ""
    name_matches: bool = False

    def days_left(self, now: datetime | None = None) -> float | None:
        if self.not_after is None:
            return None
        now = now or datetime.now(UTC)
        return round((self.not_after - now).total_seconds() / 86400, 3)

    @property
    def untrusted(self) -> bool:
        """Verification failed for a reason other than dates or the name (unknown CA,
        self-signed, incomplete chain)."""
        return not self.verified and self.verify_code not in (
            None,
            _EXPIRED,
            _NOT_YET_VALID,
            _HOSTNAME_MISMATCH,
            _IP_MISMATCH,
        )


def band(days_left: float, cfg: CertificateSettings) -> tuple[Severity, float] | None:
    """The expiry band days_left falls in (closest first): critical, high, warning."""
    for severity, limit in (
        (Severity.CRITICAL, cfg.critical_days),
        (Severity.HIGH, cfg.high_days),
        (Severity.WARNING, cfg.warning_days),
    ):
        if days_left < limit:
            return severity, limit
    return None


def _label_match(pattern: str, name: str) -> bool:
    """RFC 6125: a wildcard only as the whole left-most label, matching exactly one label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:] and "." in pattern[2:]
    return pattern == name


def name_matches(cert: x509.Certificate, name: str) -> bool:
    """The subjectAltName covers ``name`` (a DNS name or an IP address); without a SAN,
    the subject's common name (as old clients did)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return any(_label_match(str(cn.value), name) for cn in cns)
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return any(_label_match(d, name) for d in san.get_values_for_type(x509.DNSName))
    return ip in san.get_values_for_type(x509.IPAddress)


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = san.get_values_for_type(x509.DNSName)
    return [*names, *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))][:50]


def _handshake(target: CertificateTarget, context: ssl.SSLContext, timeout: float) -> bytes:
    """The peer's certificate (DER) after a handshake with SNI; raises on any failure.
    ``timeout`` bounds the connect, and the whole handshake (CPython's ssl module runs the
    handshake against one deadline, so a server trickling bytes cannot stretch it)."""
    sni = target.expected_name
    with socket.create_connection((target.host, target.port), timeout=timeout) as raw:
        raw.settimeout(timeout)
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server sent no certificate")
    return der


def _contexts(
    target: CertificateTarget, cfg: CertificateSettings
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cafile = target.ca_file or cfg.ca_file
    verifying = ssl.create_default_context(cafile=cafile)
    reading = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    reading.check_hostname = False
    reading.verify_mode = ssl.CERT_NONE
    return verifying, reading


def probe(target: CertificateTarget, cfg: CertificateSettings) -> CertInfo:
    """Connect to the endpoint and read its certificate; never raises."""
    info = CertInfo(target.name)
    try:
        verifying, reading = _contexts(target, cfg)
    except (OSError, ssl.SSLError) as exc:
        info.error = f"CA file unusable: {type(exc).__name__}: {exc}"
        return info
    try:
        der = _handshake(target, verifying, cfg.timeout_seconds)
        info.verified = True
    except ssl.SSLCertVerificationError as exc:
        info.verify_code, info.verify_message = exc.verify_code, str(exc.verify_message)[:300]
        try:
            der = _handshake(target, reading, cfg.timeout_seconds)
        except (OSError, ssl.SSLError) as again:
            info.error = f"{type(again).__name__}: {again}"[:300]
            return info
    except (OSError, ssl.SSLError) as exc:
        info.error = f"{type(exc).__name__}: {exc}"[:300]
        return info
    _read(info, der, target.expected_name)
    return info


def _read(info: CertInfo, der: bytes, name: str) -> None:
    cert = x509.load_der_x509_certificate(der)
    info.not_after = cert.not_valid_after_utc
    info.not_before = cert.not_valid_before_utc
    info.subject = cert.subject.rfc4514_string()[:300]
    info.issuer = cert.issuer.rfc4514_string()[:300]
    info.serial = format(cert.serial_number, "x")
    info.dns_names = _dns_names(cert)
    info.name_matches = name_matches(cert, name)
