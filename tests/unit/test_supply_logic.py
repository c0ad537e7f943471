"""Pure logic of the dependency and certificate checks: what a pip-audit report means, the
version to upgrade to, certificate name matching and the expiry bands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trustme
from cryptography import x509

from remediation.security.certificates import band, name_matches
from remediation.security.dependencies import Advisory, Scan, Vulnerable, interpret
from remediation.settings.certificates import CertificateSettings

# What pip-audit 2.10 wrote here with the PyPI service unreachable (exit code 0).
UNREACHABLE_PYPI = {
    "dependencies": [
        {
            "name": "requests",
            "skip_reason": "Dependency not found on PyPI and could not be audited: requests (2.0.0)",
        },
        {
            "name": "six",
            "skip_reason": "Dependency not found on PyPI and could not be audited: six (1.16.0)",
        },
    ],
    "fixes": [],
}


def test_every_package_skipped_is_a_failed_scan_not_a_clean_one() -> None:
    """pip-audit's "not found" for every package (its answer with the service unreachable)
    is a failed scan naming the reason, with nothing audited."""
    scan = interpret(Scan("app"), UNREACHABLE_PYPI)
    assert not scan.ok and scan.audited == 0 and scan.vulnerable == []
    assert "nothing was audited (2 skipped" in (scan.error or "")
    assert "may be unreachable" in (scan.error or "")


def test_an_empty_report_is_a_failed_scan() -> None:
    """No dependency at all (a wrong path, an empty file) is not "no vulnerabilities"."""
    assert "no dependencies found" in (interpret(Scan("app"), {"dependencies": []}).error or "")
    assert not interpret(Scan("app"), {"nothing": 1}).ok


def test_some_skipped_is_a_scan_that_ran() -> None:
    """One package audited and one skipped: the scan ran; the skipped one is listed."""
    report = {
        "dependencies": [
            {"name": "a", "version": "1.0", "vulns": []},
            {"name": "b", "skip_reason": "editable"},
        ]
    }
    scan = interpret(Scan("app"), report)
    assert scan.ok and scan.audited == 1 and scan.skipped == [("b", "editable")]


def test_upgrade_to_is_the_lowest_version_fixing_every_advisory() -> None:
    """Fixes in several release lines: the lowest fix above the installed version per
    advisory, then the highest of those; an advisory without a fix means no such version."""
    v = Vulnerable(
        "django",
        "3.2.1",
        [
            Advisory("A", [], ["2.2.20", "3.2.4", "4.0.1"]),
            Advisory("B", [], ["3.2.10", "4.0.2"]),
        ],
    )
    assert v.upgrade_to == "3.2.10"
    assert v.fixed_versions == ["2.2.20", "3.2.4", "3.2.10", "4.0.1", "4.0.2"]
    v.advisories.append(Advisory("C", [], []))
    assert v.upgrade_to is None


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _cert(ca: trustme.CA, *names: str) -> x509.Certificate:
    pem = ca.issue_cert(*names).cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem)


@pytest.mark.parametrize(
    ("names", "wanted", "ok"),
    [
        (("shop.example.com",), "shop.example.com", True),
        (("shop.example.com",), "SHOP.example.com.", True),
        (("shop.example.com",), "www.example.com", False),
        (("*.example.com",), "shop.example.com", True),
        (("*.example.com",), "a.shop.example.com", False),
        (("*.example.com",), "example.com", False),
        (("127.0.0.1",), "127.0.0.1", True),
        (("127.0.0.1",), "127.0.0.2", False),
    ],
)
def test_name_matching_follows_rfc_6125(
    ca: trustme.CA, names: tuple[str, ...], wanted: str, ok: bool
) -> None:
    """A wildcard covers exactly one left-most label; IP names match IP SAN entries."""
    assert name_matches(_cert(ca, *names), wanted) is ok


def test_bands_are_30_14_7_days_by_default_and_configurable() -> None:
    """Closer than 7 days critical, 14 high, 30 warning; further: nothing."""
    cfg = CertificateSettings()
    assert [band(d, cfg) for d in (40, 29, 13, 6.9)] == [
        None,
        ("warning", 30),
        ("high", 14),
        ("critical", 7),
    ]
    tight = CertificateSettings(warning_days=10, high_days=5, critical_days=2)
    assert band(9, tight) == ("warning", 10) and band(29, tight) is None


def test_bands_must_be_ordered() -> None:
    """CRITICAL_DAYS <= HIGH_DAYS <= WARNING_DAYS, or the settings are refused."""
    with pytest.raises(ValueError, match="CRITICAL_DAYS <= HIGH_DAYS"):
        CertificateSettings(warning_days=7, high_days=14)


def test_a_renew_command_is_split_like_a_shell_but_never_run_by_one() -> None:
    """RENEW_COMMAND is shlex-split into argv; a per-certificate command overrides it, and
    '' disables renewal; an unbalanced quote is refused at start."""
    cfg = CertificateSettings(
        renew_command="certbot renew --deploy-hook 'systemctl reload nginx'",
        targets=[{"name": "a", "host": "h"}, {"name": "b", "host": "h", "renew_command": ""}],  # type: ignore[list-item]
    )
    assert cfg.renew_argv(cfg.targets[0]) == [
        "certbot",
        "renew",
        "--deploy-hook",
        "systemctl reload nginx",
    ]
    assert cfg.renew_argv(cfg.targets[1]) == []
    with pytest.raises(ValueError, match="cannot split"):
        CertificateSettings(renew_command="certbot 'renew")


def test_days_left_counts_from_now() -> None:
    """days_left is the time to notAfter in days (negative once expired)."""
    from remediation.security.certificates import CertInfo

    now = datetime(2026, 1, 1, tzinfo=UTC)
    info = CertInfo("x", not_after=now + timedelta(days=3, hours=12))
    assert info.days_left(now) == 3.5
    assert CertInfo("x", not_after=now - timedelta(days=1)).days_left(now) == -1.0
