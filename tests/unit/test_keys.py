"""Every ``rem:`` key is written in remediation/guards/keys.py, and nowhere else.

The key strings are stored state: a deployment upgraded in place must find what it kept under
the old names, so the strings the domain modules use are pinned here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from remediation import celery_cluster, proxies, restarts, throttles
from remediation.guards import keys

PACKAGE = Path(__file__).resolve().parents[2] / "remediation"
KEYS_MODULE = PACKAGE / "guards" / "keys.py"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that stand alone as statements (docstrings, notes)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def rem_literals(path: Path) -> list[str]:
    """'path:line' of every string literal (or f-string part) in path starting with rem:."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    return [
        f"{path}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("rem:")
        and id(node) not in skip
    ]


def test_rem_keys_are_written_only_in_the_keys_module() -> None:
    """A "rem:..." literal anywhere in the package but guards/keys.py fails the test."""
    modules = [path for path in sorted(PACKAGE.rglob("*.py")) if path != KEYS_MODULE]
    assert len(modules) > 50
    found = [hit for path in modules for hit in rem_literals(path)]
    assert found == []


def test_the_scan_sees_a_rem_literal(tmp_path: Path) -> None:
    """The scan itself finds plain and f-string keys, and skips docstrings."""
    module = tmp_path / "probe.py"
    module.write_text('"""rem:doc"""\nA = "rem:x"\ndef f(n):\n    return f"rem:y:{n}"\n')
    assert [hit.rsplit(":", 1)[1] for hit in rem_literals(module)] == ["2", "4"]


def test_stored_key_strings_are_unchanged() -> None:
    """The keys kept before they moved into guards/keys.py, string for string."""
    assert proxies.PREFIX == "rem:proxy:"
    assert proxies.INDEX_KEY == "rem:proxy:index"
    assert throttles.THROTTLE_INDEX == "rem:throttles"
    assert throttles.PAUSED_INDEX == "rem:paused_queues"
    assert throttles.throttle_key("openai") == "rem:throttle:openai"
    assert throttles.paused_key("low") == "rem:paused_queue:low"
    assert celery_cluster.scale_key("pool") == "rem:scale:pool"
    assert restarts.state_key("web") == "rem:restart:web"
    assert keys.REDBEAT == "rem:redbeat:"
