"""Calls anyone with broker access could send, through real workers: forged, malformed and
replayed trigger headers, and kwargs of 2 MB. Each is rejected and audited before anything
runs, and the workers keep serving (issue 10, reproductions 7 and 9)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
import redis
from celery import Celery

from remediation import signing
from remediation.context import Trigger
from remediation.guards import keys
from remediation.tasks import TRIGGER_HEADER
from tests.support.audit import Audit
from tests.support.env import TEST_SIGNING_KEY

DEDUPE = "remediation.act.dedupe_job_queue"
QUEUE = "job_queue"


def trigger() -> Trigger:
    return Trigger(
        finding_id=None,
        check="redis_job_queue",
        check_params={"target": "self"},
        fingerprint="ab" * 12,
        incident="ab" * 12 + "-0123abcd",
    )


def signed(kwargs: dict[str, Any], task: str = DEDUPE) -> dict[str, Any]:
    return trigger().to_header(TEST_SIGNING_KEY.encode(), task, kwargs)


def resigned(**changes: Any) -> dict[str, Any]:
    """A header with some fields changed and then signed properly with our key: what only a
    holder of the key could send (it must still be refused when the content is wrong)."""
    fields = {k: v for k, v in signed({}).items() if k != "sig"} | changes
    payload = {"task": DEDUPE, "kwargs": {}, **fields}
    return {**fields, "sig": signing.sign(TEST_SIGNING_KEY.encode(), "trigger", payload)}


def forged() -> dict[str, Any]:
    header = signed({})
    return {**header, "sig": hashlib.sha256(b"guess").hexdigest()}


FORGED = "signature does not match"
HOSTILE_HEADERS = {  # name -> (header, what the refusal says)
    "forged signature": (forged, FORGED),
    "signed with another key": (lambda: trigger().to_header(b"k" * 40, DEDUPE, {}), FORGED),
    "copied onto other kwargs": (lambda: signed({"target": "SELF"}), FORGED),
    "copied onto another task": (lambda: signed({}, "remediation.act.flush_cache"), FORGED),
    "a string": (lambda: "not a header", "not an object"),
    "fields missing": (lambda: {"check": "redis_job_queue", "incident": "x"}, "missing"),
    "altered after signing": (lambda: {**signed({}), "check": "no_such_check"}, FORGED),
    "signed, unknown check": (lambda: resigned(check="no_such_check"), "no check named"),
    "signed, bad check params": (
        lambda: resigned(check_params={"target": "no target!"}),
        "params of check redis_job_queue",
    ),
    "signed, bad incident": (lambda: resigned(incident="x" * 40), "malformed: incident"),
    "signed, expired": (lambda: resigned(issued_at=time.time() - 30 * 86400), "lifetime"),
}


@pytest.fixture
def job_list(worker_env: dict[str, str]) -> redis.Redis:
    r = redis.Redis.from_url(worker_env["REMEDIATION_STATE_REDIS_URL"])
    resource = f"self/{QUEUE}"
    r.delete(
        QUEUE, keys.cooldown("dedupe_job_queue", resource), keys.lock("dedupe_job_queue", resource)
    )
    r.rpush(QUEUE, "a", "b", "a")
    return r


@pytest.mark.parametrize("name", HOSTILE_HEADERS)
def test_bad_trigger_headers_are_rejected_audited_and_run_nothing(
    name: str, client: Celery, audit: Audit, job_list: redis.Redis
) -> None:
    """A trigger header that is forged, malformed, expired or copied from another call is
    rejected and audited; the action does not run and no guard state is touched."""
    before = job_list.dump(QUEUE)
    header, why = HOSTILE_HEADERS[name]
    res = client.send_task(DEDUPE, kwargs={}, headers={TRIGGER_HEADER: header()})
    out = res.get(timeout=60)
    assert out["outcome"] == "rejected" and out["reason"].startswith("trigger header refused")
    assert why in out["reason"], out["reason"]
    (row,) = audit.rows(
        "SELECT outcome, error, decision_id FROM action_runs WHERE task_id = %s", res.id
    )
    assert row["outcome"] == "rejected" and row["decision_id"] is None
    assert audit.rows("SELECT id FROM guard_decisions WHERE task_id = %s", res.id) == []
    assert job_list.dump(QUEUE) == before
    assert not job_list.exists(
        keys.idempotency(f"dedupe_job_queue:self/{QUEUE}:{trigger().incident}")
    )


def test_a_signed_header_is_accepted(client: Celery, audit: Audit, job_list: redis.Redis) -> None:
    """The same call with a header our dispatcher signed is admitted and acts."""
    res = client.send_task(DEDUPE, kwargs={}, headers={TRIGGER_HEADER: signed({})})
    out = res.get(timeout=60)
    assert out["outcome"] == "succeeded", out
    assert job_list.lrange(QUEUE, 0, -1) == [b"a", b"b"]


def test_two_megabyte_kwargs_are_rejected_quickly_and_stored_truncated(
    client: Celery, audit: Audit, job_list: redis.Redis
) -> None:
    """A 2 MB pattern is rejected before validation and audited as size + sha256 + prefix;
    the same worker then serves an ordinary call."""
    junk = "x" * (2 * 1024 * 1024)
    kwargs = {"patterns": [junk], "note": "password=hunter2"}
    res = client.send_task("remediation.act.flush_cache", kwargs=kwargs)
    out = res.get(timeout=60)
    assert out["outcome"] == "rejected" and "kwargs too large" in out["reason"]
    (row,) = audit.rows(
        "SELECT params, error, length(params::text) AS stored FROM action_runs WHERE task_id = %s",
        res.id,
    )
    raw = json.dumps(kwargs, separators=(",", ":")).encode()
    assert row["params"]["_truncated"] is True and row["params"]["bytes"] == len(raw)
    assert row["params"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert row["stored"] < 1024 and "hunter2" not in json.dumps(row["params"])
    assert audit.rows("SELECT id FROM guard_decisions WHERE task_id = %s", res.id) == []
    assert (
        audit.rows(
            "SELECT count(*) AS n FROM action_runs WHERE action = 'notify'"
            " AND length(params::text) > 100000"
        )[0]["n"]
        == 0
    )
    served = client.send_task("remediation.check.redis_job_queue", kwargs={})
    assert served.get(timeout=60)["status"] == "ok"
