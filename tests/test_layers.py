"""The layers' import contracts (pyproject.toml [tool.importlinter], run by `make lint`) hold
for the tree, and bite: a check that imports an action in a scratch copy breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, config: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the given config, finding `remediation` on pythonpath first."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev group (make venv)")
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def contracts_only(tmp_path: Path) -> Path:
    """The [tool.importlinter] tables of pyproject.toml, alone in a file of their own."""
    text = (ROOT / "pyproject.toml").read_text()
    start = text.index("[tool.importlinter]")
    end = text.index("\n[tool.", start + 1)
    config = tmp_path / "contracts.toml"
    config.write_text(text[start:end] + "\n")
    return config


def test_the_tree_keeps_every_layer_contract(tmp_path: Path) -> None:
    """lint-imports on the package as it is: every contract kept, none broken."""
    result = lint_imports(ROOT, ROOT / "pyproject.toml", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "Checks never import actions" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        (
            "checks/leak.py",
            "from remediation.actions.backoff import tune_backoff\n",
            "Checks never import actions or the Celery wiring BROKEN",
        ),
        (
            "actions/leak.py",
            "def leak():\n    from remediation.checks.postgres_health import IDLE\n",
            "Actions never import checks or the Celery wiring BROKEN",
        ),
        (
            "guards/leak.py",
            "import remediation.runner\n",
            "Guards know nothing of checks, actions, the runner or the Celery wiring BROKEN",
        ),
        (
            "throttles_leak.py",
            "from remediation.actions.pauses import pause_low_priority\n",
            "Domain modules (what a check and an action share) import neither BROKEN",
        ),
    ],
)
def test_a_forbidden_import_in_a_scratch_copy_fails_naming_its_contract(
    tmp_path: Path, module: str, source: str, contract: str
) -> None:
    """A copy of the package with one forbidden import added (a function-level one too)
    fails lint-imports, naming the contract it broke and the module that broke it."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "remediation", src / "remediation", ignore=shutil.ignore_patterns("__pycache__")
    )
    config = contracts_only(tmp_path)
    if module == "throttles_leak.py":  # a domain module's own import, not a new module
        with (src / "remediation" / "throttles.py").open("a") as handle:
            handle.write("\n" + source)
        leaking = "remediation.throttles"
    else:
        (src / "remediation" / module).write_text(source)
        leaking = "remediation." + module.removesuffix(".py").replace("/", ".")
    result = lint_imports(tmp_path, config, src)
    assert result.returncode != 0, result.stdout
    assert contract in result.stdout
    assert leaking in result.stdout  # the copy was analysed, not the installed package
