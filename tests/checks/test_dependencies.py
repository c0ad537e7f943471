"""python_dependencies: the real pip-audit against a local OSV advisory service on 127.0.0.1,
over pinned requirement files and an installed environment; scans that did not run."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remediation.checks.dependencies import PythonDependenciesParams, python_dependencies
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import get_logger
from remediation.settings import Settings
from remediation.settings.dependencies import DependencySettings
from tests.support.advisories import OsvServer, advisory
from tests.support.base import free_port

RECORDS = {
    ("requests", "2.0.0"): [
        advisory("PYSEC-2014-13", "requests", ["2.3.0"], ["CVE-2014-1829"]),
        advisory("GHSA-j8r2-6x86-q33q", "requests", ["2.31.0"]),
    ],
    ("demo-pkg", "1.0.0"): [advisory("OSV-DEMO-1", "demo-pkg", [])],
}


@pytest.fixture
def osv() -> Iterator[OsvServer]:
    server = OsvServer(dict(RECORDS))
    yield server
    if server.stall is not None:
        server.stall.set()
    server.stop()


@pytest.fixture
def requirements(tmp_path: Path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("requests==2.0.0\nsix==1.16.0\n")
    return path


def run(osv_url: str, sources: list[dict[str, Any]], **cfg: Any) -> list[Finding]:
    deps = DependencySettings(service="osv", osv_url=osv_url, sources=sources, **cfg)
    ctx = CheckContext(Settings(dependencies=deps), get_logger())
    return python_dependencies(ctx, PythonDependenciesParams())


def test_a_vulnerable_pinned_package_is_reported_with_ids_and_fixes(
    osv: OsvServer, requirements: Path
) -> None:
    """requests 2.0.0 is one high dependency_vulnerable naming both advisories, the fixed
    versions and the lowest version fixing both; six (no advisory) is not reported."""
    found = run(osv.url, [{"name": "app", "requirements": [str(requirements)]}])
    assert [(f.kind, f.subject, f.severity.value) for f in found] == [
        ("dependency_vulnerable", "app/requests", "high")
    ]
    ev = found[0].evidence
    assert [a["id"] for a in ev["advisories"]] == ["PYSEC-2014-13", "GHSA-j8r2-6x86-q33q"]
    assert ev["advisories"][0]["aliases"] == ["CVE-2014-1829"]
    assert (ev["fixed_versions"], ev["upgrade_to"], ev["version"]) == (
        ["2.3.0", "2.31.0"],
        "2.31.0",
        "2.0.0",
    )
    assert "upgrade to 2.31.0" in found[0].summary
    assert {q["package"]["name"] for q in osv.queries} == {"requests", "six"}


def test_severity_by_package_and_by_source(osv: OsvServer, requirements: Path) -> None:
    """PACKAGE_SEVERITY wins over the source's severity, which wins over SEVERITY."""
    src = {"name": "app", "requirements": [str(requirements)], "severity": "warning"}
    assert run(osv.url, [src])[0].severity.value == "warning"
    found = run(osv.url, [src], package_severity={"Requests": "critical"})
    assert found[0].severity.value == "critical"


def test_ignored_advisories_are_not_reported(osv: OsvServer, requirements: Path) -> None:
    """IGNORE_IDS goes to pip-audit as --ignore-vuln: with both ids ignored nothing is reported."""
    src = {"name": "app", "requirements": [str(requirements)]}
    one = run(osv.url, [src], ignore_ids=["PYSEC-2014-13"])
    assert [a["id"] for a in one[0].evidence["advisories"]] == ["GHSA-j8r2-6x86-q33q"]
    assert run(osv.url, [src], ignore_ids=["PYSEC-2014-13", "GHSA-j8r2-6x86-q33q"]) == []


def test_an_installed_environment_is_audited_as_installed(osv: OsvServer, tmp_path: Path) -> None:
    """A site-packages folder (here one package's dist-info) is listed and audited; an
    advisory without a fix says so."""
    site = tmp_path / "site-packages"
    info = site / "demo_pkg-1.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0.0\n")
    found = run(osv.url, [{"name": "env", "environment": str(site)}])
    assert [(f.kind, f.subject) for f in found] == [("dependency_vulnerable", "env/demo-pkg")]
    assert found[0].evidence["upgrade_to"] is None
    assert "no fixed version" in found[0].summary


def test_a_failing_advisory_service_is_a_failed_scan(osv: OsvServer, requirements: Path) -> None:
    """An advisory service answering 503 is dependency_scan_failed (high), and no package is
    reported either way."""
    osv.fail_status = 503
    found = run(osv.url, [{"name": "app", "requirements": [str(requirements)]}])
    assert [(f.kind, f.subject, f.severity.value) for f in found] == [
        ("dependency_scan_failed", "app", "high")
    ]
    assert "unreachable or failing" in found[0].evidence["error"]
    assert "vulnerabilities unknown" in found[0].summary


def test_an_unreachable_advisory_service_is_a_failed_scan(requirements: Path) -> None:
    """Nothing listening at OSV_URL: dependency_scan_failed naming the connection error."""
    url = f"http://127.0.0.1:{free_port()}/v1/query"
    found = run(url, [{"name": "app", "requirements": [str(requirements)]}])
    assert [f.kind for f in found] == ["dependency_scan_failed"]
    assert "ConnectionError" in found[0].evidence["error"]


def test_a_scan_past_its_deadline_is_killed_and_failed(osv: OsvServer, requirements: Path) -> None:
    """An advisory service that never answers: pip-audit is killed at TIMEOUT_SECONDS and
    the scan is failed, not clean."""
    osv.stall = threading.Event()
    found = run(
        osv.url,
        [{"name": "app", "requirements": [str(requirements)]}],
        timeout_seconds=3,
        request_timeout_seconds=120,
    )
    assert [f.kind for f in found] == ["dependency_scan_failed"]
    assert "did not finish within 3s" in found[0].evidence["error"]


def test_unpinned_or_missing_requirements_fail_without_resolving(
    osv: OsvServer, tmp_path: Path
) -> None:
    """A requirement that is not pinned is refused by pip-audit (nothing is resolved from an
    index); a requirement file that does not exist fails before pip-audit runs."""
    loose = tmp_path / "loose.txt"
    loose.write_text("requests>=2\n")
    found = run(
        osv.url,
        [
            {"name": "loose", "requirements": [str(loose)]},
            {"name": "gone", "requirements": [str(tmp_path / "nope.txt")]},
        ],
    )
    assert [(f.kind, f.subject) for f in found] == [
        ("dependency_scan_failed", "loose"),
        ("dependency_scan_failed", "gone"),
    ]
    assert "not pinned" in found[0].evidence["error"]
    assert "not found" in found[1].evidence["error"]
    assert osv.queries == []


def test_no_sources_and_unknown_names_are_info(osv: OsvServer, requirements: Path) -> None:
    """Without SOURCES the check says so (info); a name not configured is reported, the
    others are still scanned."""
    assert [f.kind for f in run(osv.url, [])] == ["dependency_unconfigured"]
    deps = DependencySettings(
        service="osv",
        osv_url=osv.url,
        sources=[{"name": "app", "requirements": [str(requirements)]}],  # type: ignore[list-item]
    )
    ctx = CheckContext(Settings(dependencies=deps), get_logger())
    found = python_dependencies(ctx, PythonDependenciesParams(sources=["app", "other"]))
    assert [(f.kind, f.subject) for f in found] == [
        ("dependency_unconfigured", "other"),
        ("dependency_vulnerable", "app/requests"),
    ]


def test_pip_audit_sees_none_of_the_workers_settings(
    osv: OsvServer, requirements: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip-audit's environment is built, not inherited: a REMEDIATION_ variable of the
    worker is not in it (the child's environment is read back through /proc)."""
    monkeypatch.setenv("REMEDIATION_TEST_SECRET_CANARY", "canary-value")
    osv.stall = threading.Event()
    result: list[Finding] = []
    scan = threading.Thread(
        target=lambda: result.extend(
            run(
                osv.url,
                [{"name": "app", "requirements": [str(requirements)]}],
                timeout_seconds=30,
            )
        )
    )
    scan.start()
    try:
        environs = _pip_audit_environments(timeout=20)
    finally:
        osv.stall.set()
        scan.join(60)
    assert environs and all(b"canary-value" not in e for e in environs)
    assert all(b"REMEDIATION_" not in e for e in environs)
    assert [f.kind for f in result] == ["dependency_vulnerable"]


def _pip_audit_environments(timeout: float) -> list[bytes]:
    """The environments of running pip-audit children of this process, once one exists."""
    from tests.support.base import wait_for

    def found() -> list[bytes]:
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                if (
                    b"pip_audit" in cmd
                    and Path(f"/proc/{pid}/status").read_text().find(f"PPid:\t{os.getpid()}\n") >= 0
                ):
                    out.append(Path(f"/proc/{pid}/environ").read_bytes())
            except OSError:
                continue
        return out

    result: list[bytes] = wait_for(found, timeout, 0.05, "a running pip-audit")
    return result
