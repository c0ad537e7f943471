"""API keys (runbooks 003 "Rotate API Keys", 004 "API Key Validation Failure") end to end
through a real worker and a real key API on 127.0.0.1: one sweep of api_keys finds a key
past its age and a missing one; the first is rotated in the runbook's order (generate,
validate, write, revoke) and verified by the check, the second is notified; no key value in
any audit row, notification or worker log line. Then `remediation keys` lists ages without values and
`remediation keys rotated NAME` records a manual rotation, audited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.audit import Audit
from tests.support.base import ROOT, wait_for
from tests.support.http_doubles import WebhookReceiver
from tests.support.key_api import KeyApi
from tests.support.own_stack import OwnStack, own_stack
from tests.support.rabbitmq import Broker

SLOT = 1302  # a RabbitMQ vhost of this module's own
OLD = "old-shop-key-0123456789abcdef"
REMEDIATION = str(Path(sys.executable).parent / "remediation")


@pytest.fixture(scope="module")
def api() -> Iterator[KeyApi]:
    server = KeyApi()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secrets") / "shop.key"


@pytest.fixture(scope="module")
def keyed(
    broker: Broker,
    pg_admin: str,
    audit_db: str,
    api: KeyApi,
    key_file: Path,
    webhook: WebhookReceiver,
) -> Iterator[OwnStack]:
    keys = [
        {
            "name": "shop",
            "file": str(key_file),
            "validate_url": api.url("validate"),
            "max_age_days": 1,
            "rotatable": True,
            "generate_command": api.provider_command(key_file.parent),
            "revoke_url": api.url("revoke"),
        },
        {"name": "groq", "env": "REM_TEST_GROQ_API_KEY", "max_age_days": 30},
    ]
    with own_stack(
        broker,
        pg_admin,
        "keys",
        SLOT,
        audit_dsn=audit_db,
        REMEDIATION_API_KEYS__KEYS=json.dumps(keys),
        REMEDIATION_NOTIFY__WEBHOOK_URL=webhook.url,
        REMEDIATION_VERIFY__ATTEMPTS="5",
    ) as own:
        yield own


def test_a_key_past_its_age_is_rotated_in_order_and_verified_a_missing_one_notified(
    keyed: OwnStack, api: KeyApi, key_file: Path, audit_db: str, webhook: WebhookReceiver
) -> None:
    """Sweep -> api_key_rotation_due -> rotate_api_key (generate, validate, write, revoke)
    -> verification recovered; api_key_missing -> a notification naming the variable."""
    api.valid, api.log[:] = {OLD}, []
    key_file.write_text(OLD + "\n")
    two_days_ago = time.time() - 2 * 86400
    os.utime(key_file, (two_days_ago, two_days_ago))
    audit = Audit(audit_db)
    sweep = keyed.client.send_task("remediation.check.api_keys", kwargs={}).get(timeout=60)
    assert sweep["dispatched"] == 2
    (run,) = audit.wait_rows(
        "SELECT a.outcome, a.verification, a.target, f.kind, d.decision, v.purpose AS verify"
        " FROM action_runs a JOIN guard_decisions d ON d.id = a.decision_id"
        " JOIN findings f ON f.id = a.finding_id AND f.id = d.finding_id"
        " JOIN check_runs v ON v.id = a.verify_check_run_id"
        " WHERE a.action = 'rotate_api_key' AND a.verification IS NOT NULL",
        timeout=90,
    )
    assert run == {
        "outcome": "succeeded",
        "verification": "recovered",
        "target": "shop",
        "kind": "api_key_rotation_due",
        "decision": "admitted",
        "verify": "verify",
    }
    new = key_file.read_text().strip()
    assert new != OLD and api.valid == {new}
    assert api.log == [  # the sweep, the rotation in the runbook's order, the verification
        ("validate", OLD),
        ("generate", OLD),
        ("validate", new),
        ("revoke", OLD),
        ("validate", new),
    ]
    assert (key_file.stat().st_mode & 0o777) == 0o600
    wait_for(
        lambda: any("REM_TEST_GROQ_API_KEY" in b.get("text", "") for b in webhook.bodies),
        30,
        0.2,
        "the missing key notified",
    )
    everything = audit.everything_as_text() + json.dumps(webhook.bodies) + keyed.worker.log()
    assert OLD not in everything and new not in everything


def test_keys_lists_ages_without_values_and_records_a_manual_rotation(
    keyed: OwnStack, key_file: Path, audit_db: str
) -> None:
    """`remediation keys --json` shows source, age and due, never a value; `keys rotated
    groq` is audited as rotated_by_hand and makes the variable's age known."""
    key_file.write_text(OLD + "\n")

    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [REMEDIATION, *args],
            env=keyed.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listing = keys("keys", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert rows["shop"]["source"] == f"file {key_file}" and rows["shop"]["due"] is False
    assert (rows["groq"]["present"], rows["groq"]["age_days"]) == (False, None)
    assert OLD not in listing.stdout
    recorded = keys("keys", "rotated", "GROQ")
    assert recorded.returncode == 0, recorded.stderr
    assert keys("keys", "rotated", "nope").returncode == 2
    (decision,) = Audit(audit_db).rows(
        "SELECT action, target, guard, reason FROM guard_decisions WHERE decision = 'rotated_by_hand'"
    )
    assert (decision["action"], decision["target"], decision["guard"]) == (
        "rotate_api_key",
        "groq",
        "operator",
    )
    after = {r["name"]: r for r in json.loads(keys("keys", "--json").stdout)}
    assert after["groq"]["age_from"] == "recorded rotation" and after["groq"]["age_days"] < 0.01
