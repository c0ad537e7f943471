"""renew_certificate: only configured certificates, the configured command as argv, bounded
in time (its whole process group killed) and in output (redacted), no settings in its
environment; against a real TLS server on 127.0.0.1 and scripts written here."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from remediation.actions.certificates import (
    RenewCertificateParams,
    renew_certificate,
    resolve_certificate,
)
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.logging import get_logger
from remediation.settings import Settings
from remediation.settings.certificates import CertificateSettings
from tests.support.base import wait_for
from tests.support.tls import TlsServer, issue


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> dict[str, Path]:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return {
        "ca": tmp_path / "ca.pem",
        "live": issue(ca, "shop.test", days=3, folder=tmp_path, stem="live"),
        "fresh": issue(ca, "shop.test", days=90, folder=tmp_path, stem="fresh"),
    }


@pytest.fixture
def server(files: dict[str, Path]) -> Iterator[TlsServer]:
    tls = TlsServer(files["live"])
    yield tls
    tls.stop()


def script(tmp_path: Path, body: str) -> str:
    """A Python script as a command line (the interpreter of this test run)."""
    path = tmp_path / f"cmd_{abs(hash(body))}.py"
    path.write_text(body)
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))}"


def settings(server: TlsServer, files: dict[str, Path], command: str, **cfg: Any) -> Settings:
    target = {
        "name": "Shop",
        "host": "127.0.0.1",
        "port": server.port,
        "server_name": "shop.test",
        "ca_file": str(files["ca"]),
    }
    return Settings(
        certificates=CertificateSettings(targets=[target], renew_command=command, **cfg)  # type: ignore[list-item]
    )


def act(s: Settings, name: str = "Shop") -> ActionResult:
    return renew_certificate(
        ActionContext(s, get_logger()), RenewCertificateParams(certificate=name)
    )


INSTALL = """
import os, shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[2] + ".new")
os.replace(sys.argv[2] + ".new", sys.argv[2])
print("Congratulations, renewed; account password=hunter2-secret")
"""


def test_resolve_allows_only_configured_certificates(
    server: TlsServer, files: dict[str, Path]
) -> None:
    """Any spelling of a configured name resolves to it; another name, another target or an
    empty renew command is refused before any guard."""
    s = settings(server, files, "certbot renew")
    ctx = CheckContext(s, get_logger())
    got = resolve_certificate(ctx, RenewCertificateParams(certificate="SHOP"))
    assert got.params.certificate == "Shop" and got.facts["program"] == "certbot"
    with pytest.raises(Refused, match="not in REMEDIATION_CERTIFICATES__TARGETS"):
        resolve_certificate(ctx, RenewCertificateParams(certificate="../etc"))
    with pytest.raises(Refused, match="always 'self'"):
        resolve_certificate(ctx, RenewCertificateParams(target="db", certificate="Shop"))
    off = CheckContext(settings(server, files, ""), get_logger())
    with pytest.raises(Refused, match="disabled"):
        resolve_certificate(off, RenewCertificateParams(certificate="Shop"))


def test_the_renew_command_installs_a_fresh_certificate_and_it_is_read_again(
    server: TlsServer, files: dict[str, Path], tmp_path: Path
) -> None:
    """The command runs, the endpoint is read before and after: changed, 90 days left; the
    command's output is kept with its secret masked."""
    command = script(tmp_path, INSTALL) + f" {files['fresh']} {files['live']}"
    result = act(settings(server, files, command))
    assert result.ok and result.changed, result.summary
    d = result.detail
    assert d["exit_code"] == 0 and d["before"]["days_left"] <= 3 and d["after"]["days_left"] > 89
    assert "Congratulations" in d["output"] and "hunter2" not in result.model_dump_json()


def test_a_command_that_changes_nothing_is_ok_but_unchanged(
    server: TlsServer, files: dict[str, Path], tmp_path: Path
) -> None:
    """certbot with nothing due exits 0 and changes nothing: unchanged (verification decides)."""
    result = act(settings(server, files, script(tmp_path, "print('no renewals were attempted')")))
    assert result.ok and not result.changed and "unchanged" in result.summary


def test_a_failing_command_is_a_failed_action(
    server: TlsServer, files: dict[str, Path], tmp_path: Path
) -> None:
    """A non-zero exit is ok=False with its code and output."""
    result = act(
        settings(server, files, script(tmp_path, "import sys; print('boom'); sys.exit(3)"))
    )
    assert not result.ok and result.detail["exit_code"] == 3 and "boom" in result.detail["output"]


def test_a_missing_program_is_a_failed_action(server: TlsServer, files: dict[str, Path]) -> None:
    """A renew program that does not exist fails the action (nothing raised)."""
    result = act(settings(server, files, "/nonexistent/certbot renew"))
    assert not result.ok and "could not start" in result.summary


HANG = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


def test_a_command_past_its_deadline_is_killed_with_its_children(
    server: TlsServer, files: dict[str, Path], tmp_path: Path
) -> None:
    """At RENEW_TIMEOUT_SECONDS the whole process group goes, the child it started too."""
    pid_file = tmp_path / "child.pid"
    command = script(tmp_path, HANG) + f" {pid_file}"
    result = act(settings(server, files, command, renew_timeout_seconds=2))
    assert not result.ok and result.detail["timed_out"] and result.detail["exit_code"] is None
    child = int(pid_file.read_text())
    wait_for(lambda: not _alive(child), 10, 0.1, "the renew command's child gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_output_is_bounded(server: TlsServer, files: dict[str, Path], tmp_path: Path) -> None:
    """Megabytes of output keep only RENEW_OUTPUT_BYTES, head and tail."""
    noisy = "import sys; sys.stdout.write('start\\n' + 'x' * 3_000_000 + '\\nend\\n')"
    result = act(settings(server, files, script(tmp_path, noisy), renew_output_bytes=1024))
    out = result.detail["output"]
    assert result.detail["output_cut"] and len(out) < 1200
    assert out.startswith("start") and out.rstrip().endswith("end")


def test_the_command_sees_none_of_the_workers_settings(
    server: TlsServer, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment is built, not inherited: no REMEDIATION_* variable reaches the command."""
    monkeypatch.setenv("REMEDIATION_TEST_CANARY", "canary-secret")
    dump = "import os; print(sorted(k for k in os.environ if k.startswith('REMEDIATION')))"
    result = act(settings(server, files, script(tmp_path, dump)))
    assert result.ok and "[]" in result.detail["output"]
