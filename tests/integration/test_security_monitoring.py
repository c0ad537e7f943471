"""Enhanced monitoring (runbook 001 "Security Incident Response 3") end to end through a
real worker: a surge of hostile clients raises the application's log level (its Redis key
and its YAML file), the audit chain links it to the surge's finding, the key expires by
itself and, once due, log_level_expiry and restore_log_level put the file back, verified.

The surge's finding is recorded as the access check (access_log_clients, another part of
issue 13) records it, and the action is sent as the worker's own dispatcher sends it: with
the params of the playbook's rule and a trigger header signed with the worker's key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from remediation.audit.store import AuditStore
from remediation.context import Trigger
from remediation.findings import Finding
from remediation.playbook import security
from remediation.tasks import TRIGGER_HEADER
from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.env import TEST_SIGNING_KEY
from tests.support.own_stack import OwnStack, own_stack
from tests.support.rabbitmq import Broker

SLOT = 1301  # a RabbitMQ vhost of this module's own
CONFIG = """\
# shop: the application's own configuration
logging:
  level: INFO  # normal operation
  format: json
"""
RAISE = "remediation.act.raise_log_level"
DURATION = 10  # seconds: ample for the checks made while raised, short for the wait after


@pytest.fixture(scope="module")
def app_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shop") / "shop.yaml"


@pytest.fixture(scope="module")
def monitored(broker: Broker, pg_admin: str, audit_db: str, app_config: Path) -> Iterator[OwnStack]:
    app = {
        "name": "shop",
        "redis_key": "shop:log_level",
        "file": str(app_config),
        "file_key": "logging.level",
    }
    with own_stack(
        broker,
        pg_admin,
        "monitoring",
        SLOT,
        audit_dsn=audit_db,
        REMEDIATION_MONITORING__APPS=json.dumps([app]),
        REMEDIATION_MONITORING__DURATION_SECONDS=str(DURATION),
        REMEDIATION_VERIFY__ATTEMPTS="5",
    ) as own:
        yield own


def surge_finding(audit_db: str) -> tuple[Finding, int]:
    """The access check's finding of a surge on the access log named "shop", on record."""
    found = Finding(
        check="access_log_clients",
        target="shop",
        kind="access_hostile_surge",
        severity="high",
        observed=12,
        threshold=10,
        summary="12 hostile clients in shop within 600s",
    )
    store = AuditStore(audit_db)
    run = store.start_check_run("access_log_clients", "shop", {"target": "shop"}, "detect", None)
    finding_id = store.add_finding(run, found, found.fingerprint + "-0badcafe")
    store.finish_check_run(run, "ok", 1, 1.0)
    return found, finding_id


def test_a_surge_raises_the_level_which_reverts_by_itself_and_is_restored(
    monitored: OwnStack, audit_db: str, app_config: Path
) -> None:
    """Raised in the key (TTL) and the file, audited from the surge's finding; the key expires
    by itself; the file is restored to its exact text by the verified expiry sweep."""
    app_config.write_text(CONFIG)
    state = redis.Redis.from_url(monitored.env["REMEDIATION_STATE_REDIS_URL"])
    audit = Audit(audit_db)
    found, finding_id = surge_finding(audit_db)
    (rule,) = [r for r in security.MONITORING if r.kind == found.kind]
    kwargs = rule.params(found)
    trigger = Trigger(
        finding_id=finding_id,
        check="log_level_expiry",  # any registered check: raise_log_level is not verified
        check_params={"target": "self"},
        fingerprint=found.fingerprint,
        incident=found.fingerprint + "-0badcafe",
    )
    header = trigger.to_header(TEST_SIGNING_KEY.encode(), RAISE, kwargs)
    out = monitored.client.send_task(RAISE, kwargs=kwargs, headers={TRIGGER_HEADER: header})
    assert out.get(timeout=60)["outcome"] == "succeeded"
    assert state.get("shop:log_level") == b"DEBUG" and 0 < state.ttl("shop:log_level") <= DURATION
    assert re.search(r"level: DEBUG +# normal operation", app_config.read_text())
    (chain,) = audit.rows(
        "SELECT c.check_name AS check, f.kind, f.target, d.decision, a.outcome, a.verification"
        " FROM action_runs a JOIN guard_decisions d ON d.id = a.decision_id"
        " JOIN findings f ON f.id = a.finding_id AND f.id = d.finding_id"
        " JOIN check_runs c ON c.id = f.check_run_id WHERE a.action = 'raise_log_level'"
        " AND f.id = %s",
        finding_id,
    )
    assert chain == {
        "check": "access_log_clients",
        "kind": "access_hostile_surge",
        "target": "shop",
        "decision": "admitted",
        "outcome": "succeeded",
        "verification": "skipped",
    }

    wait_for(lambda: state.get("shop:log_level") is None, 30, 0.2, "the key expired by itself")

    def sweep() -> int:  # as beat sends it; the file's end may trail the key's by a moment
        out = monitored.client.send_task(
            "remediation.check.log_level_expiry", kwargs={"target": "self"}
        ).get(timeout=60)
        return int(out["dispatched"])

    assert wait_for(sweep, 30, 0.5, "the expiry sweep finds the file raise due") == 1
    (restored,) = audit.wait_rows(
        "SELECT a.outcome, a.verification, f.kind, c.purpose AS verify FROM action_runs a"
        " JOIN findings f ON f.id = a.finding_id JOIN check_runs c ON c.id = a.verify_check_run_id"
        " WHERE a.action = 'restore_log_level' AND a.verification IS NOT NULL",
        timeout=60,
    )
    assert restored == {
        "outcome": "succeeded",
        "verification": "recovered",
        "kind": "log_level_expired",
        "verify": "verify",
    }
    assert app_config.read_text() == CONFIG
    assert not [k for k in state.scan_iter("rem:loglevel:app:*")]
    assert os.stat(app_config).st_size == len(CONFIG.encode())
