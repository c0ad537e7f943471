"""Enhanced monitoring (runbook 001 "Security Incident Response 3") end to end through a
real worker: hostile clients in the application's access log make the access check
(access_log_clients) report a surge; the playbook raises the application's log level (its
Redis key and its YAML file) from that finding, the audit chain links the two, the key
expires by itself and, once due, log_level_expiry and restore_log_level put the file back,
verified.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.audit import Audit
from tests.support.base import wait_for
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
OFFENDERS = 3
DURATION = 10  # seconds: ample for the checks made while raised, short for the wait after


@pytest.fixture(scope="module")
def app_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shop") / "shop.yaml"


@pytest.fixture(scope="module")
def monitored(broker: Broker, pg_admin: str, audit_db: str, app_config: Path) -> Iterator[OwnStack]:
    access_log = app_config.parent / "access.log"
    access_log.write_text("")
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
        # the access log of the same application: three offenders make a surge
        REMEDIATION_ACCESS__LOGS=json.dumps([{"name": "shop", "path": str(access_log)}]),
        REMEDIATION_ACCESS__MAXRETRY="2",
        REMEDIATION_ACCESS__SURGE_OFFENDERS=str(OFFENDERS),
        REMEDIATION_VERIFY__ATTEMPTS="5",
    ) as own:
        yield own


def refusals(log: Path, clients: int, each: int) -> None:
    """``each`` refused logins (401) just now from each of ``clients`` documentation addresses."""
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    with log.open("a") as fh:
        for n in range(1, clients + 1):
            line = f'198.51.100.{n} - - [{stamp}] "POST /login HTTP/1.1" 401 0 "-" "bot"\n'
            fh.write(line * each)


def test_a_surge_raises_the_level_which_reverts_by_itself_and_is_restored(
    monitored: OwnStack, audit_db: str, app_config: Path
) -> None:
    """Raised in the key (TTL) and the file, audited from the surge's finding; the key expires
    by itself; the file is restored to its exact text by the verified expiry sweep."""
    app_config.write_text(CONFIG)
    state = redis.Redis.from_url(monitored.env["REMEDIATION_STATE_REDIS_URL"])
    audit = Audit(audit_db)
    refusals(app_config.parent / "access.log", OFFENDERS, 2)
    out = monitored.run_check("access_log_clients", target="self")
    assert out["dispatched"] == OFFENDERS + 2  # a ban each, the surge's notice and its raise
    (chain,) = audit.wait_rows(
        "SELECT c.check_name AS check, c.purpose, f.kind, f.target, d.decision, a.outcome,"
        " a.verification FROM action_runs a JOIN guard_decisions d ON d.id = a.decision_id"
        " JOIN findings f ON f.id = a.finding_id AND f.id = d.finding_id"
        " JOIN check_runs c ON c.id = f.check_run_id WHERE a.action = 'raise_log_level'"
        " AND a.verification IS NOT NULL",
        timeout=60,
    )
    assert chain == {
        "check": "access_log_clients",
        "purpose": "detect",
        "kind": "access_hostile_surge",
        "target": "shop",
        "decision": "admitted",
        "outcome": "succeeded",
        "verification": "skipped",  # a louder log does not end a surge; its undo is verified
    }
    assert state.get("shop:log_level") == b"DEBUG" and 0 < state.ttl("shop:log_level") <= DURATION
    assert re.search(r"level: DEBUG +# normal operation", app_config.read_text())

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
