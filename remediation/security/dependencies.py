"""pip-audit as the dependency check runs it, and what its answer means.

pip-audit runs as a child process (``python -m pip_audit``, the installed library) with its
JSON report written to a file of ours: within a deadline, its process group killed on
timeout, no shell, an environment of its own. Requirement files are audited with
``--no-deps --disable-pip`` (pinned names only, nothing resolved, no index reached);
an environment is audited as installed (``--path SITE-PACKAGES``, which lists it with
``pip list`` and nothing else).

A scan that did not run is never "no known vulnerabilities": pip-audit stops without a
report when the advisory service cannot be reached (connection refused, an HTTP error
from it), and with the PyPI service unreachable behind a proxy that answers 404 it marks
every package "not found" and reports nothing. Both are a failed scan here.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from remediation.security.bounded_run import child_env, run_bounded
from remediation.settings import DependencySettings
from remediation.settings.dependencies import DependencySource

MAX_ADVISORIES = 20
"""Advisories listed per package (the count covers all of them)."""
MAX_DESCRIPTION = 300
MAX_SKIPPED_LISTED = 20
_UNREACHABLE_MARKERS = (
    "ConnectionError",
    "Could not connect",
    "ConnectTimeout",
    "ReadTimeout",
    "ServiceError",
    "HTTPError",
    "Max retries exceeded",
    "Name or service not known",
)


@dataclass
class Advisory:
    id: str
    aliases: list[str]
    fix_versions: list[str]
    description: str = ""


@dataclass
class Vulnerable:
    """One package with known advisories in one source."""

    name: str
    version: str
    advisories: list[Advisory]

    @property
    def ids(self) -> list[str]:
        return [a.id for a in self.advisories]

    @property
    def fixed_versions(self) -> list[str]:
        """Every version any advisory names as fixed, lowest first."""
        seen = {v for a in self.advisories for v in a.fix_versions}
        return sorted(seen, key=_version_key)

    @property
    def upgrade_to(self) -> str | None:
        """The lowest version above the installed one that every advisory calls fixed (None
        when an advisory has no fix yet)."""
        wanted: list[str] = []
        for a in self.advisories:
            above = [v for v in a.fix_versions if _version_key(v) > _version_key(self.version)]
            if not above:
                return None
            wanted.append(min(above, key=_version_key))
        return max(wanted, key=_version_key) if wanted else None


@dataclass
class Scan:
    """The outcome of one source's audit: ``error`` set when it did not run (or means nothing)."""

    source: str
    error: str | None = None
    audited: int = 0
    vulnerable: list[Vulnerable] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _version_key(text: str) -> Any:
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (0, text)


def site_packages(path: str) -> list[str]:
    """The site-packages folders of a virtualenv (pyvenv.cfg in it), or the path itself."""
    if os.path.isfile(os.path.join(path, "pyvenv.cfg")):
        found = glob.glob(os.path.join(glob.escape(path), "lib*", "python3*", "site-packages"))
        return sorted(p for p in found if os.path.isdir(p))
    return [path] if os.path.isdir(path) else []


def audit_argv(
    source: DependencySource, cfg: DependencySettings, out: str, cache: str
) -> list[str]:
    """pip-audit's command line for one source (the configured files and folders only)."""
    argv = [sys.executable, "-m", "pip_audit", "--format", "json", "--output", out]
    argv += ["--progress-spinner", "off", "--cache-dir", cache, "--desc", "on"]
    argv += ["--aliases", "on", "--timeout", str(cfg.request_timeout_seconds)]
    argv += ["--vulnerability-service", cfg.service]  # the OSV URL goes in its environment
    for vuln in cfg.ignore_ids:
        argv += ["--ignore-vuln", vuln]
    if source.requirements:
        for req in source.requirements:
            argv += ["--requirement", req]
        return [*argv, "--no-deps", "--disable-pip"]
    for folder in site_packages(source.environment or ""):
        argv += ["--path", folder]
    return argv


def _why_failed(output: str, code: int | None) -> str:
    """A short reason from pip-audit's own messages (last lines), naming an unreachable
    advisory service as such."""
    noise = ("File ", "raise ", "^", "Traceback", "During handling", "The above exception")
    # a traceback's frames and source lines are indented; its messages are not
    told = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln[0].isspace()]
    told = [ln for ln in told if not ln.startswith(noise)]
    tail = (told[-1] if told else "")[-500:] or "(no message)"
    if any(marker in output for marker in _UNREACHABLE_MARKERS):
        return f"advisory service unreachable or failing: {tail}"
    return f"pip-audit exited with {code} and no report: {tail}"


def _advisory(raw: dict[str, Any]) -> Advisory:
    return Advisory(
        id=str(raw.get("id", "?"))[:100],
        aliases=[str(a)[:100] for a in raw.get("aliases") or []][:10],
        fix_versions=[str(v)[:64] for v in raw.get("fix_versions") or []][:50],
        description=str(raw.get("description") or "")[:MAX_DESCRIPTION],
    )


def interpret(scan: Scan, report: dict[str, Any]) -> Scan:
    """Fill ``scan`` from pip-audit's JSON report; a report in which nothing was audited
    (every package skipped, or none found) is a failed scan."""
    deps = report.get("dependencies")
    if not isinstance(deps, list):
        scan.error = "pip-audit's report has no dependency list"
        return scan
    for dep in deps:
        if not isinstance(dep, dict):
            continue
        name = str(dep.get("name", "?"))[:100]
        if "skip_reason" in dep:
            scan.skipped.append((name, str(dep["skip_reason"])[:200]))
            continue
        scan.audited += 1
        vulns = [v for v in dep.get("vulns") or [] if isinstance(v, dict)]
        if vulns:
            version = str(dep.get("version", "?"))[:64]
            scan.vulnerable.append(Vulnerable(name, version, [_advisory(v) for v in vulns]))
    if scan.audited == 0:
        first = scan.skipped[0][1] if scan.skipped else "no dependencies found"
        scan.error = (
            f"nothing was audited ({len(scan.skipped)} skipped: {first}); the advisory"
            " service may be unreachable"
            if scan.skipped
            else f"nothing was audited: {first} (check the configured files or environment)"
        )
    return scan


def _missing(source: DependencySource) -> str | None:
    """Why the configured files or folder cannot be audited, before running anything."""
    for req in source.requirements:
        if not os.path.isfile(req):
            return f"requirement file {req} not found"
    if source.environment is not None and not site_packages(source.environment):
        return f"{source.environment} is neither a virtualenv nor a site-packages folder"
    return None


def scan_source(source: DependencySource, cfg: DependencySettings, timeout: float) -> Scan:
    """Audit one source within ``timeout`` seconds; never raises for what pip-audit does."""
    scan = Scan(source.name)
    scan.error = _missing(source)
    if scan.error:
        return scan
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rem-pip-audit-") as tmp:
        out = os.path.join(tmp, "report.json")
        argv = audit_argv(source, cfg, out, os.path.join(tmp, "cache"))
        env = child_env(
            {
                "PIP_NO_INPUT": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                # pip-audit's own variable for --osv-url: a mirror's credentials stay out of argv
                "PIP_AUDIT_OSV_URL": cfg.osv_url.get_secret_value(),
            }
        )
        try:
            ran = run_bounded(argv, timeout, output_limit=4096, env=env, cwd=tmp)
        except OSError as exc:
            scan.error = f"pip-audit could not be started: {type(exc).__name__}: {exc}"
            return scan
        scan.seconds, scan.exit_code = round(time.monotonic() - started, 3), ran.code
        if ran.timed_out:
            scan.error = f"pip-audit did not finish within {timeout:.0f}s (killed)"
            return scan
        report = _read_report(out, cfg.max_output_bytes)
        if isinstance(report, str):
            scan.error = _why_failed(ran.output, ran.code) if report == "absent" else report
            return scan
    return interpret(scan, report)


def _read_report(path: str, limit: int) -> dict[str, Any] | str:
    """The JSON report, or why there is none ("absent" when pip-audit wrote nothing)."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return "absent"
    if size > limit:
        return f"pip-audit's report is {size} bytes, over MAX_OUTPUT_BYTES ({limit})"
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        return f"pip-audit's report cannot be read: {type(exc).__name__}"
    return data if isinstance(data, dict) else "pip-audit's report is not a JSON object"
