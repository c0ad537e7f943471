"""Job list check and actions (runbook 000) against a real redis-server."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from remediation.actions.job_queue import (
    JobQueueActionParams,
    dead_letter_stale_jobs,
    dedupe_job_queue,
    resolve_job_list,
)
from remediation.audit.store import AuditStore
from remediation.checks.job_queue import JobQueueParams, redis_job_queue
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.registry import get_action
from remediation.runner import Runner
from tests.support.runner import Recorder
from tests.support.services import RedisServer

ACTIONS = ("dedupe_job_queue", "dead_letter_stale_jobs")


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
    assert jobs(r) == [
        {"id": 0, "n": 0},
        {"id": 1, "n": 0},
        {"id": 2, "n": 0},
        {"id": 3, "n": 0},
        {"other": 1},
    ]


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
    r.rpush(
        "job_queue",
        json.dumps({"id": 1, "enqueued_at": now - 3600}),
        json.dumps({"id": 2, "enqueued_at": now}),
        json.dumps({"id": 3}),
    )
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


def decisions(s: Any, task_id: str) -> list[dict[str, Any]]:
    return AuditStore(s.audit_dsn.get_secret_value()).query(
        "SELECT decision, guard, reason, resource FROM guard_decisions WHERE task_id = %s",
        (task_id,),
    )


def runs(s: Any, task_id: str) -> list[dict[str, Any]]:
    return AuditStore(s.audit_dsn.get_secret_value()).query(
        "SELECT outcome FROM action_runs WHERE task_id = %s", (task_id,)
    )


@pytest.mark.parametrize("name", ACTIONS)
def test_a_list_that_is_not_configured_is_left_byte_for_byte(
    settings_env: Any, r: redis.Redis, name: str
) -> None:
    """A call naming another list is refused before any guard: the list DUMPs the same
    before and after, a 'refused' decision names both variables, no budget is spent."""
    s = settings_env(
        REMEDIATION_JOB_QUEUE__KEYS=json.dumps(["jobs:extra"]),
        REMEDIATION_JOB_QUEUE__MAX_AGE_SECONDS="60",
    )
    old = json.dumps({"id": 1, "enqueued_at": time.time() - 3600})
    r.rpush("payments", old, old, json.dumps({"id": 2}), old)
    before = r.dump("payments")
    sent = Recorder()
    out = Runner(s, sent).run_action(name, {"key": "payments"}, task_id=f"nc-{name}")
    assert out.outcome == "refused"
    assert r.dump("payments") == before and not r.exists("job_queue:dead_letter")
    (row,) = decisions(s, f"nc-{name}")
    assert (row["decision"], row["guard"]) == ("refused", "resolve")
    assert "REMEDIATION_JOB_QUEUE__KEY " in row["reason"]
    assert "REMEDIATION_JOB_QUEUE__KEYS" in row["reason"] and "'payments'" in row["reason"]
    assert runs(s, f"nc-{name}") == []
    assert r.zcard(keys.budget(name)) == 0
    assert [k["kind"] for _, k, _ in sent.sent] == ["action_refused"]


@pytest.mark.parametrize("name", ACTIONS)
def test_a_configured_list_that_does_not_exist_is_refused_quietly(
    settings_env: Any, r: redis.Redis, name: str
) -> None:
    """The configured list missing: refused as nothing to do (no notice), never 'succeeded';
    a configured key holding a string is refused and left as it is."""
    s = settings_env(REMEDIATION_JOB_QUEUE__KEYS=json.dumps(["jobs:extra"]))
    sent = Recorder()
    runner = Runner(s, sent)
    out = runner.run_action(name, {}, task_id=f"missing-{name}")
    assert (out.outcome, "does not exist" in out.reason) == ("refused", True)
    assert runs(s, f"missing-{name}") == [] and sent.sent == []
    r.set("jobs:extra", "not a list")
    out = runner.run_action(name, {"key": "jobs:extra"}, task_id=f"string-{name}")
    assert out.outcome == "refused" and "is a string, not a job list" in out.reason
    assert r.get("jobs:extra") == b"not a list"
    assert r.zcard(keys.budget(name)) == 0


def test_names_are_made_canonical_for_the_guards(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer
) -> None:
    """No key means the configured key, spelled out; a case variant of the Redis target is
    the configured name, so both calls share one cooldown and the second is suppressed."""
    s = settings_env(REMEDIATION_REDIS_TARGETS=json.dumps({"Queue": redis_server.url(0)}))
    ctx = CheckContext(s, get_logger())
    r.rpush("job_queue", "a", "a")
    resolved = resolve_job_list(ctx, JobQueueActionParams(target="QUEUE")).params
    assert (resolved.target, resolved.key) == ("Queue", "job_queue")
    assert get_action("dedupe_job_queue").resource(resolved) == "Queue/job_queue"
    runner = Runner(s, Recorder())
    first = runner.run_action("dedupe_job_queue", {"target": "queue"}, task_id="canon-1")
    r.rpush("job_queue", "a")
    second = runner.run_action(
        "dedupe_job_queue", {"target": "QUEUE", "key": "job_queue"}, task_id="canon-2"
    )
    assert (first.outcome, second.outcome) == ("succeeded", "suppressed")
    assert second.reason.startswith("cooling down")
    assert decisions(s, "canon-2")[0]["resource"] == "Queue/job_queue"
    assert r.lrange("job_queue", 0, -1) == [b"a", b"a"]  # the second call did not run


def test_dead_letter_list_is_never_a_source(settings_env: Any, r: redis.Redis) -> None:
    """dead_letter_stale_jobs refuses the dead-letter list even when it is listed in KEYS."""
    s = settings_env(REMEDIATION_JOB_QUEUE__KEYS=json.dumps(["job_queue:dead_letter"]))
    r.rpush("job_queue:dead_letter", json.dumps({"job": "x"}))
    ctx = CheckContext(s, get_logger())
    params = JobQueueActionParams(key="job_queue:dead_letter")
    with pytest.raises(Refused, match="is the dead-letter list"):
        get_action("dead_letter_stale_jobs").resolve(ctx, params)  # type: ignore[misc]
    assert resolve_job_list(ctx, params).params.key == "job_queue:dead_letter"


def test_prefix_entries_admit_lists_under_them_only() -> None:
    """An entry ending in '*' in REMEDIATION_JOB_QUEUE__KEYS admits the lists under that prefix
    and nothing else (not the bare prefix, not a longer look-alike)."""
    from remediation.actions.job_queue import configured_job_list

    keys = ["jobs:*", "exact"]
    assert configured_job_list("job_queue", keys, "job_queue")
    assert configured_job_list("job_queue", keys, "jobs:1") and configured_job_list(
        "job_queue", keys, "jobs:shard:9"
    )
    assert configured_job_list("job_queue", keys, "exact")
    for name in ("jobs:", "jobs", "jobsX:1", "exactly", "payments"):
        assert not configured_job_list("job_queue", keys, name), name


def stale_list(r: redis.Redis, stale: int, fresh: int) -> None:
    now = time.time()
    old = [json.dumps({"id": i, "enqueued_at": now - 3600}) for i in range(stale)]
    new = [json.dumps({"id": -i, "enqueued_at": now}) for i in range(1, fresh + 1)]
    r.rpush("job_queue", *old, *new)


def test_job_list_plans_count_what_would_change_and_change_nothing(
    settings_env: Any, r: redis.Redis
) -> None:
    """Each plan counts the jobs its action would remove or move (capped per run), and the
    job list and the dead-letter list are byte for byte as they were."""
    s = settings_env(
        REMEDIATION_JOB_QUEUE__MAX_AGE_SECONDS="60", REMEDIATION_JOB_QUEUE__MAX_CHANGES_PER_RUN="3"
    )
    stale_list(r, stale=5, fresh=2)
    r.rpush("job_queue", r.lindex("job_queue", 0), r.lindex("job_queue", 1))  # 2 duplicates
    before = r.lrange("job_queue", 0, -1)
    ctx = CheckContext(s, get_logger())
    dedupe = get_action("dedupe_job_queue").plan(ctx, JobQueueActionParams())
    assert [(i.key, i.detail["jobs"]) for i in dedupe.items] == [("queue:job_queue", 2)]
    stale = get_action("dead_letter_stale_jobs").plan(ctx, JobQueueActionParams())
    assert [(i.key, i.detail["jobs"]) for i in stale.items] == [("queue:job_queue", 3)]  # cap
    assert r.lrange("job_queue", 0, -1) == before
    assert not r.exists("job_queue:dead_letter")
    r.delete("job_queue")
    stale_list(r, stale=0, fresh=2)
    assert get_action("dedupe_job_queue").plan(ctx, JobQueueActionParams()).items == []


def test_an_approval_changes_only_the_approved_list_within_its_count(
    settings_env: Any, r: redis.Redis
) -> None:
    """Another list's approval changes nothing; an approved list loses at most what its plan
    counts; an approved list with nothing left to change is refused."""
    s = settings_env(REMEDIATION_JOB_QUEUE__MAX_AGE_SECONDS="60")
    stale_list(r, stale=2, fresh=1)
    before = r.lrange("job_queue", 0, -1)
    other = ActionContext(s, get_logger(), approved=frozenset({"queue:jobs:other"}))
    with pytest.raises(Refused, match="not the job list approved"):
        dead_letter_stale_jobs(other, JobQueueActionParams())
    assert r.lrange("job_queue", 0, -1) == before
    ours = ActionContext(s, get_logger(), approved=frozenset({"queue:job_queue"}))
    result = dead_letter_stale_jobs(ours, JobQueueActionParams())
    assert (result.detail["moved"], result.detail["bound"]) == (2, 2)
    assert [j["id"] for j in jobs(r)] == [-1]
    with pytest.raises(Refused, match="nothing approved is left"):
        dedupe_job_queue(ours, JobQueueActionParams())
    assert [j["id"] for j in jobs(r)] == [-1]


def test_jobs_that_went_stale_after_the_approval_stay(settings_env: Any, r: redis.Redis) -> None:
    """The approver saw 1 stale job; with 2 stale now, the approved run moves only 1."""
    s = settings_env(REMEDIATION_JOB_QUEUE__MAX_AGE_SECONDS="60")
    stale_list(r, stale=2, fresh=1)
    ctx = ActionContext(
        s,
        get_logger(),
        approved=frozenset({"queue:job_queue"}),
        approved_detail={"queue:job_queue": {"jobs": 1}},
    )
    result = dead_letter_stale_jobs(ctx, JobQueueActionParams())
    assert (result.detail["moved"], result.detail["bound"]) == (1, 1)
    assert r.llen("job_queue:dead_letter") == 1
