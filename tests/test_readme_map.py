"""README's "Where each runbook step lives" table matches the playbook and the tree."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from remediation import playbook
from remediation.registry import get_action, get_check, load_all

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "remediation"


def map_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Where each runbook step lives", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def source_of(name: str, run: str) -> str:
    spec = get_action(name) if run == "act" else get_check(name)
    return str(Path(inspect.getsourcefile(spec.fn) or "").relative_to(PACKAGE))


def test_every_acting_rule_is_in_the_map_with_its_files() -> None:
    """One row per rule that acts, in playbook order: runbook step, kind, action and the
    action's file as the tree has them; the check file named emits that kind."""
    load_all()
    acting = [rule for rule in playbook.RULES if rule.action != "notify"]
    rows = map_rows()
    assert len(rows) == len(acting)
    for rule, (step, kind, check, action, action_file) in zip(acting, rows, strict=True):
        assert (step, kind, action) == (rule.runbook, f"`{rule.kind}`", f"`{rule.action}`")
        assert action_file == source_of(rule.action, rule.run)
        check_file = re.match(r"(checks/\w+\.py)", check)
        assert check_file, check
        emitted = (PACKAGE / check_file.group(1)).read_text()
        configured = "PROMETHEUS__RULES" in check and check_file.group(1) == "checks/prometheus.py"
        assert configured or f'"{rule.kind}"' in emitted, (rule.kind, check)


def test_the_count_of_notify_rules_is_true() -> None:
    """The sentence under the map counts the rules that only notify, as the playbook has them."""
    notify = sum(rule.action == "notify" for rule in playbook.RULES)
    assert f"the other {notify} rules notify" in (ROOT / "README.md").read_text()
