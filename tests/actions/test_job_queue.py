"""Job list check and actions (runbook 000) against a real redis-server."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from remediation.actions.job_queue import (
    JobQueueActionParams,
    dead_letter_stale_jobs,
    dedupe_job_queue,
)
from remediation.checks.job_queue import JobQueueParams, redis_job_queue
from remediation.context import ActionContext, CheckContext
from remediation.logging import get_logger


def jobs(r: redis.Redis, key: str = "job_queue") -> list[Any]:
    return [json.loads(x) for x in r.lrange(key, 0, -1)]


def test_dedupe_keeps_first_occurrence_and_order(settings_env: Any, r: redis.Redis) -> None:
    """Later duplicates go; first occurrences stay in their order; nothing else changes."""
    s = settings_env()
    payloads = [{"id": i % 4, "n": 0} for i in range(10)] + [{"other": 1}]
    r.rpush("job_queue", *[json.dumps(p) for p in payloads])
    findings = redis_job_queue(CheckContext(s, get_logger()), JobQueueParams())
    assert [f.kind for f in findings] == ["redis_job_queue_duplicates"]
    assert findings[0].observed == 6
    result = dedupe_job_queue(ActionContext(s, get_logger()), JobQueueActionParams())
    assert result.detail["removed"] == 6
    assert jobs(r) == [{"id": 0, "n": 0}, {"id": 1, "n": 0}, {"id": 2, "n": 0},
                       {"id": 3, "n": 0}, {"other": 1}]  # fmt: skip


def test_dedupe_by_id_field_and_cap(settings_env: Any, r: redis.Redis) -> None:
    """With an id field, jobs with the same id are duplicates; the cap bounds removals."""
    s = settings_env(
        REMEDIATION_JOB_QUEUE__ID_FIELD="id", REMEDIATION_JOB_QUEUE__MAX_CHANGES_PER_RUN="2"
    )
    r.rpush("job_queue", *[json.dumps({"id": 7, "try": i}) for i in range(5)], "not json")
    result = dedupe_job_queue(ActionContext(s, get_logger()), JobQueueActionParams())
    assert result.detail["removed"] == 2
    assert r.llen("job_queue") == 4
    assert r.lindex("job_queue", 0) == b'{"id": 7, "try": 0}'


def test_stale_jobs_move_to_dead_letter_with_reason(settings_env: Any, r: redis.Redis) -> None:
    """Jobs older than the bound move with a reason; fresh and undated jobs stay; no delete."""
    s = settings_env(REMEDIATION_JOB_QUEUE__MAX_AGE_SECONDS="60")
    now = time.time()
    r.rpush("job_queue", json.dumps({"id": 1, "enqueued_at": now - 3600}),
            json.dumps({"id": 2, "enqueued_at": now}), json.dumps({"id": 3}))  # fmt: skip
    findings = redis_job_queue(CheckContext(s, get_logger()), JobQueueParams())
    assert [(f.kind, f.observed) for f in findings] == [("redis_job_queue_stale", 1)]
    result = dead_letter_stale_jobs(ActionContext(s, get_logger()), JobQueueActionParams())
    assert result.detail["moved"] == 1
    assert [j["id"] for j in jobs(r)] == [2, 3]
    (dead,) = jobs(r, "job_queue:dead_letter")
    assert json.loads(dead["job"])["id"] == 1 and dead["reason"] == "older than 60s"


def test_backlog_bands(settings_env: Any, r: redis.Redis) -> None:
    """More than 50 pending is a warning (runbook 004), more than 1000 is high (runbook 002)."""
    s = settings_env()
    ctx = CheckContext(s, get_logger())
    r.rpush("job_queue", *[json.dumps({"n": i}) for i in range(51)])
    assert [(f.kind, f.severity.value) for f in redis_job_queue(ctx, JobQueueParams())] == [
        ("redis_job_queue_backlog", "warning")
    ]
    r.rpush("job_queue", *[json.dumps({"n": i}) for i in range(51, 1001)])
    assert redis_job_queue(ctx, JobQueueParams())[0].severity.value == "high"
