"""Issue 14's Alertmanager intake end to end: a real Prometheus evaluates a rule on a fault
the test makes (duplicate jobs in a Redis job list), two real Alertmanagers (no cluster, so
both notify) post to a real `remediation serve`, a real worker dedupes the list once, the
fix is verified by the mapped check, the alert resolves and the incident is closed; the same
payload posted concurrently and again as a retry runs one action; hostile requests (no or a
wrong token, oversize, fuzzed payloads) run nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediation.guards import keys
from tests.support.alerting import (
    ALERTMANAGER,
    PROMETHEUS,
    QUEUE_RULE,
    Process,
    Served,
    alertmanager,
    gauge_exporter,
    prometheus,
    served_stack,
    webhook_payload,
)
from tests.support.env import missing
from tests.support.rabbitmq import Broker

SLOT = 1401  # a RabbitMQ vhost of this module's own
TOKEN = "intake-test-token-" + "0123456789abcdef" * 2
QUEUE = "job_queue"
RULES = [
    {
        "name": "queue-duplicates-by-resolve",
        "alertname": "JobQueueDuplicatesNoCheck",
        "kind": "redis_job_queue_duplicates",
        "target": {"value": "self"},
        "subject": {"label": "queue"},
    },
    QUEUE_RULE,
]


class Intake(Served):
    """The intake's stack, with helpers to post alerts and read the action runs."""

    def post(self, body: Any, token: str | None = TOKEN, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = json.dumps(body) if isinstance(body, dict | list) else body
        headers["Content-Type"] = "application/json"
        return requests.post(self.url + "/alerts", data=data, headers=headers, timeout=30, **kw)

    def actions(self) -> list[dict[str, Any]]:
        return self.stack.audit.rows("SELECT * FROM action_runs ORDER BY id")


@pytest.fixture(scope="module")
def intake(
    broker: Broker, pg_admin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Intake]:
    if not (Path(ALERTMANAGER).exists() and Path(PROMETHEUS).exists()):
        missing("prometheus and prometheus-alertmanager (scripts/ensure_test_tools.sh)")
    env = {
        "REMEDIATION_ALERTS__RULES": json.dumps(RULES),
        "REMEDIATION_SERVE__TOKENS": json.dumps([TOKEN]),
        "REMEDIATION_SERVE__MAX_BODY_BYTES": "65536",
        "REMEDIATION_ALERTS__MAX_ALERTS": "50",
        "REMEDIATION_JOB_QUEUE__KEYS": json.dumps(["jobs:*"]),
        # verification by the alert resolving waits up to 30 x 0.5 s
        "REMEDIATION_VERIFY__ATTEMPTS": "30",
    }
    with served_stack(
        broker, pg_admin, "intake", SLOT, tmp_path_factory.mktemp("serve"), **env
    ) as s:
        yield Intake(s.stack, s.url, s.serve, s.state)


def _duplicates(state: redis.Redis, key: str) -> int:
    jobs = state.lrange(key, 0, -1)
    return len(jobs) - len(set(jobs))


@pytest.mark.parametrize(
    ("alertname", "queue", "verifier"),
    [
        ("JobQueueDuplicates", QUEUE, "redis_job_queue"),
        ("JobQueueDuplicatesNoCheck", "jobs:by-resolve", "alertmanager_alert"),
    ],
    ids=["mapped-check", "alert-resolves"],
)
def test_alert_fires_acts_once_verifies_and_resolves(
    intake: Intake, tmp_path: Path, alertname: str, queue: str, verifier: str
) -> None:
    """Prometheus fires, two Alertmanagers post, one dedupe runs and is verified (by the
    mapped check, or by the alert resolving); the resolved alert is audited."""
    state, audit = intake.state, intake.stack.audit
    exporter = gauge_exporter(
        "app_job_queue_duplicates", {"queue": queue}, lambda: _duplicates(state, queue)
    ).start()
    managers = [alertmanager(tmp_path / f"am{n}", intake.url + "/alerts", TOKEN) for n in (1, 2)]
    rule = {
        "alert": alertname,
        "expr": "app_job_queue_duplicates > 0",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "duplicate jobs in {{ $labels.queue }}"},
    }
    prom = prometheus(tmp_path / "prom", [exporter.target], [rule], [m.port for m in managers])
    resource = f"self/{queue}"
    started: list[Process] = []
    try:
        for p in [*managers, prom]:
            started.append(p.start())
        state.delete(queue)
        state.rpush(queue, "job-a", "job-a", "job-a", "job-b")  # the fault: two duplicates
        runs = audit.wait_rows(
            "SELECT * FROM action_runs WHERE action = 'dedupe_job_queue' AND resource = %s"
            " AND verification IS NOT NULL AND verification <> 'skipped'",
            resource,
            timeout=90,
        )
        assert runs[0]["outcome"] == "succeeded" and runs[0]["verification"] == "recovered"
        assert sorted(state.lrange(queue, 0, -1)) == [b"job-a", b"job-b"]
        # resolved: posted by both Alertmanagers once Prometheus sees the fix
        resolved = audit.wait_rows(
            "SELECT * FROM check_runs WHERE check_name = 'alertmanager'"
            " AND params->>'status' = 'resolved' AND params->'alerts'->0->>'alertname' = %s",
            alertname,
            timeout=60,
        )
        assert resolved[0]["params"]["alerts"][0]["outcome"] == "resolved"
        time.sleep(3)  # let the second Alertmanager's copies arrive: still one action
        finding = audit.rows("SELECT * FROM findings WHERE id = %s", runs[0]["finding_id"])[0]
        batch = audit.rows("SELECT * FROM check_runs WHERE id = %s", finding["check_run_id"])[0]
        assert batch["check_name"] == "alertmanager" and batch["purpose"] == "detect"
        assert finding["check_name"] == verifier and finding["subject"] == queue
        assert finding["evidence"]["alertname"] == alertname
        decision = audit.rows("SELECT * FROM guard_decisions WHERE id = %s", runs[0]["decision_id"])
        assert decision[0]["decision"] == "admitted"
        verify = audit.rows(
            "SELECT * FROM check_runs WHERE id = %s", runs[0]["verify_check_run_id"]
        )
        assert verify[0]["check_name"] == verifier and verify[0]["purpose"] == "verify"
        everything = audit.rows(
            "SELECT * FROM action_runs WHERE action = 'dedupe_job_queue' AND resource = %s",
            resource,
        )
        assert len(everything) == 1, everything
        outcomes = [
            a["outcome"]
            for r in audit.rows("SELECT params FROM check_runs WHERE check_name = 'alertmanager'")
            for a in r["params"].get("alerts", [])
            if a["status"] == "firing" and a["alertname"] == alertname
        ]
        # one mapped; the other Alertmanager's copy a duplicate
        assert outcomes.count("mapped") == 1 and len(outcomes) >= 2, outcomes
        assert not state.exists(keys.incident(finding["fingerprint"]))
    finally:
        for p in started:
            p.stop()
        exporter.stop()


def test_same_alert_concurrently_and_retried_runs_one_action(intake: Intake) -> None:
    """Eight concurrent copies and a later retry of one alert give one action run."""
    key = "jobs:concurrent"
    intake.state.delete(key)
    intake.state.rpush(key, "x", "x", "y")
    body = webhook_payload("a1b2c3d4e5f60718", key)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: intake.post(body), range(8)))
    assert [r.status_code for r in replies] == [200] * 8
    assert sum(r.json()["mapped"] for r in replies) == 1
    assert sum(r.json()["duplicates"] for r in replies) == 7
    query = "SELECT * FROM action_runs WHERE action = 'dedupe_job_queue' AND resource = %s"
    runs = intake.stack.audit.wait_rows(query, f"self/{key}", timeout=60)
    retry = intake.post(body)
    assert retry.status_code == 200 and retry.json()["duplicates"] == 1
    time.sleep(2)
    assert len(intake.stack.audit.rows(query, f"self/{key}")) == 1 == len(runs)
    assert intake.state.lrange(key, 0, -1) == [b"x", b"y"]


def test_unmapped_and_unknown_target_are_audited_and_answered_2xx(intake: Intake) -> None:
    """An alert no rule maps is audited as unmapped; nothing is dispatched; the reply is 200."""
    body = webhook_payload("00000000000000aa", QUEUE)
    body["alerts"][0]["labels"]["alertname"] = "SomethingElse"
    reply = intake.post(body)
    assert reply.status_code == 200 and reply.json()["unmapped"] == 1
    run = intake.stack.audit.rows(
        "SELECT params FROM check_runs WHERE id = %s", reply.json()["check_run_id"]
    )[0]
    assert run["params"]["alerts"][0]["outcome"] == "unmapped"


def test_no_or_wrong_token_is_401_and_nothing_runs(intake: Intake) -> None:
    """Without the token, or with a wrong one, a valid payload is a 401 and runs nothing."""
    key = "jobs:unauthorized"
    intake.state.delete(key)
    intake.state.rpush(key, "z", "z")
    before = len(intake.stack.audit.rows("SELECT id FROM check_runs"))
    body = webhook_payload("0000000000000bad", key)
    for token in (None, "wrong" + TOKEN[5:], ""):
        reply = intake.post(body, token=token)
        assert reply.status_code == 401, reply.text
        assert reply.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in intake.serve.log()
    time.sleep(1)
    assert len(intake.stack.audit.rows("SELECT id FROM check_runs")) == before
    assert intake.state.lrange(key, 0, -1) == [b"z", b"z"]


def test_oversize_body_is_413(intake: Intake) -> None:
    """A body over REMEDIATION_SERVE__MAX_BODY_BYTES is refused with 413, streamed or not."""
    big = b'{"version":"4","pad":"' + b"a" * 70_000 + b'"}'
    assert intake.post(big).status_code == 413
    chunks = iter([big[:40_000], big[40_000:]])
    assert intake.post(chunks).status_code == 413  # chunked: no Content-Length


def test_too_many_alerts_in_one_call_is_413_and_runs_nothing(intake: Intake) -> None:
    """More alerts than REMEDIATION_ALERTS__MAX_ALERTS in one call: 413, nothing audited."""
    body = webhook_payload("00000000000000cc", QUEUE)
    body["alerts"] = [
        {**body["alerts"][0], "fingerprint": f"{n:016x}", "labels": {"alertname": "Many"}}
        for n in range(51)
    ]
    before = len(intake.stack.audit.rows("SELECT id FROM check_runs"))
    reply = intake.post(body)
    assert reply.status_code == 413 and "MAX_ALERTS" in reply.json()["detail"]
    assert len(intake.stack.audit.rows("SELECT id FROM check_runs")) == before


def test_nul_in_what_the_audit_stores_is_422_not_503(intake: Intake) -> None:
    """A NUL in the receiver or an annotation (PostgreSQL text cannot hold one) is a 422
    naming the field, audited as rejected; it once reached the audit write and answered 503
    (found by the schema fuzz test)."""
    rejected = "SELECT count(*) AS n FROM check_runs WHERE status = 'rejected'"
    for where in ("receiver", "annotation"):
        body = webhook_payload("00000000000000dd", QUEUE)
        if where == "receiver":
            body["receiver"] = "team\x00x"
        else:
            body["alerts"][0]["annotations"] = {"summary": "a\x00b"}
        before = intake.stack.audit.rows(rejected)[0]["n"]
        reply = intake.post(json.dumps(body))
        assert reply.status_code == 422, (where, reply.status_code, reply.text)
        assert "NUL" in reply.json()["detail"], reply.text
        assert intake.stack.audit.rows(rejected)[0]["n"] == before + 1


hostile = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    mutation=st.sampled_from(["replace", "alert_field", "top_field", "raw"]),
    field=st.sampled_from(
        [
            "status",
            "labels",
            "startsAt",
            "fingerprint",
            "annotations",
            "version",
            "alerts",
            "receiver",
        ]
    ),
    value=hostile,
    raw=st.binary(max_size=200),
)
def test_fuzzed_webhook_is_2xx_or_4xx_and_runs_nothing(
    intake: Intake, mutation: str, field: str, value: Any, raw: bytes
) -> None:
    """Any body (mutated payloads, random JSON, random bytes) is answered 2xx or 4xx, never
    dispatching an action: the fuzz alerts' queue is never touched."""
    key = "jobs:fuzz"
    if not intake.state.exists(key):
        intake.state.rpush(key, "f", "f")
    body: Any = webhook_payload("00000000000f0220", key)
    body["alerts"][0]["labels"]["alertname"] = "Fuzzed"  # no rule maps it if it stays valid
    if mutation == "replace":
        body = value
    elif mutation == "alert_field":
        body["alerts"][0][field] = value
    elif mutation == "top_field":
        body[field] = value
    rejected = "SELECT count(*) AS n FROM check_runs WHERE status = 'rejected'"
    before = intake.stack.audit.rows(rejected)[0]["n"]
    reply = intake.post(raw if mutation == "raw" else json.dumps(body))
    assert 200 <= reply.status_code < 500, (reply.status_code, reply.text)
    if reply.status_code == 422:  # an authenticated caller's bad payload is audited
        assert intake.stack.audit.rows(rejected)[0]["n"] == before + 1
    if reply.status_code == 200:
        assert reply.json()["mapped"] == 0
    assert intake.state.lrange(key, 0, -1) == [b"f", b"f"]


def test_openapi_describes_the_webhook_without_a_token(intake: Intake) -> None:
    """/openapi.json needs no token and documents POST /alerts with its bearer scheme."""
    spec = requests.get(intake.url + "/openapi.json", timeout=10).json()
    post = spec["paths"]["/alerts"]["post"]
    assert {"401", "413", "422"} <= set(post["responses"])
    assert post["security"] and "WebhookPayload" in json.dumps(spec["components"])


def _metrics(intake: Intake) -> dict[str, float]:
    text = requests.get(
        intake.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ).text
    pairs = (ln.rsplit(" ", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))
    return {name: float(value) for name, value in pairs}


def test_metrics_count_the_intake_outcomes(intake: Intake) -> None:
    """/metrics (with the token) counts received, mapped, duplicate and unmapped alerts and
    refused requests."""
    assert requests.get(intake.url + "/metrics", timeout=10).status_code == 401
    before = _metrics(intake)
    mapped = webhook_payload("00000000000000dd", "jobs:metrics")
    unmapped = webhook_payload("00000000000000de", QUEUE)
    unmapped["alerts"][0]["labels"]["alertname"] = "NotMapped"
    for body in (mapped, mapped, unmapped):
        assert intake.post(body).status_code == 200
    assert intake.post(mapped, token=None).status_code == 401
    assert intake.post(b"x" * 70_000).status_code == 413
    after = _metrics(intake)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('remediation_alerts_total{outcome="received"}') == 3
    assert delta('remediation_alerts_total{outcome="mapped"}') == 1
    assert delta('remediation_alerts_total{outcome="duplicate"}') == 1
    assert delta('remediation_alerts_total{outcome="unmapped"}') == 1
    assert delta('remediation_intake_rejected_total{reason="unauthorized"}') == 1
    assert delta('remediation_intake_rejected_total{reason="too_large"}') == 1
