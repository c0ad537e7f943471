"""The web console's browser tests: a served stack for them and where screenshots go."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.alerting import QUEUE_RULE, Served, served_stack
from tests.support.base import ROOT
from tests.support.env import missing
from tests.support.rabbitmq import Broker

CHROMIUM = "/usr/bin/chromium"
DOCS_SHOTS = Path(ROOT) / "docs" / "console"


@contextlib.contextmanager
def console_stack(
    broker: Broker, pg_admin: str, name: str, slot: int, folder: Path, token: str, **env: str
) -> Iterator[Served]:
    """served_stack with the JobQueueDuplicates rule, ``token`` as the one serve token and
    the jobs:* queues checked (``env`` adds or overrides); skipped without chromium."""
    if not Path(CHROMIUM).exists():
        missing("chromium (scripts/ensure_test_tools.sh)")
    common = {
        "REMEDIATION_ALERTS__RULES": json.dumps([QUEUE_RULE]),
        "REMEDIATION_SERVE__TOKENS": json.dumps([token]),
        "REMEDIATION_JOB_QUEUE__KEYS": json.dumps(["jobs:*"]),
    }
    with served_stack(broker, pg_admin, name, slot, folder, **{**common, **env}) as served:
        yield served


def shots_folder(tmp_path: Path) -> Path:
    """docs/console with REMEDIATION_TEST_SCREENSHOTS=1 (the README's screenshots are
    refreshed), else ``tmp_path`` (a test run leaves the checkout as it was); made."""
    refresh = os.environ.get("REMEDIATION_TEST_SCREENSHOTS", "") == "1"
    shots = DOCS_SHOTS if refresh else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    return shots


@contextlib.contextmanager
def chromium_page(height: int = 700) -> Iterator[Any]:
    """A page of Debian's headless chromium, driven by Playwright (1200 pixels wide)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1200, "height": height})
        finally:
            browser.close()
