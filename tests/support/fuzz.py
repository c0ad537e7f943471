"""What the fuzz runs are configured with, and the runner they drive (global dry-run)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import redis

from remediation.context import Trigger
from remediation.runner import Runner
from remediation.settings import Settings
from tests.support.docker_compose import DOCKER_URL

# Targets the strategies may name (and vary the case of): configured below.
CONFIGURED = ["app", "cache"]


MAX_KWARGS = 4096
"""The size bound the fuzz runs with (REMEDIATION_GUARDS__MAX_KWARGS_BYTES)."""


TABLES = ["t1", "Price History", "orders"]


PATTERNS = ["cache:*", "sess:*"]


# field name -> configured values the strategies draw (and vary the case of)
KNOWN = {
    "tables": ["t1", "public.t1", "Price History", "orders", "missing"],
    "key": ["job_queue", "fuzz:a", "fuzz:b", "job_queue:dead_letter"],
    "patterns": [*PATTERNS, "other:*"],
    "integration": ["shop", "other"],
    "queue": ["low_priority", "celery"],
    "model": ["gpt-3.5-turbo", "gpt-4"],
    "container": ["rem-fuzz-none"],
}


CANONICAL_TARGETS = {"self", "app", "cache", "docker", "celery", "pool"}
"""Every target a call may resolve to: a dry-run row never names another spelling."""


# (action, form) -> outcome counts, printed at the end of the session
RESULTS: dict[tuple[str, str], Counter[str]] = {}


def fuzz_env(db: str, cache_url: str, folder: str) -> dict[str, str]:
    return {
        "REMEDIATION_GUARDS__DRY_RUN": "true",
        "REMEDIATION_GUARDS__MAX_KWARGS_BYTES": str(MAX_KWARGS),
        "REMEDIATION_POSTGRES_TARGETS__APP": db,
        "REMEDIATION_REDIS_TARGETS__CACHE": cache_url,
        "REMEDIATION_JOB_QUEUE__KEYS": '["fuzz:*"]',
        "REMEDIATION_CACHE__FLUSH_PATTERNS": json.dumps(PATTERNS),
        "REMEDIATION_HOST__CLEANUP_DIRS": json.dumps([folder]),
        "REMEDIATION_BACKUP__DIR": folder,
        "REMEDIATION_BACKUP__FILE_PATHS": json.dumps([folder]),
        "REMEDIATION_CONTAINERS__DOCKER_URL": DOCKER_URL,
        "REMEDIATION_CONTAINERS__PROJECT": "rem-fuzz",
        "REMEDIATION_CONTAINERS__HARD_REBOOT": "true",
        "REMEDIATION_PROXIES__PROXY_LIST": '["http://127.0.0.1:1"]',
        "REMEDIATION_RATE_LIMITS__ENDPOINTS": '[{"name": "shop", "url": "http://127.0.0.1:1/"}]',
        "REMEDIATION_WORKERS__SCALE_TARGETS": '[{"name": "pool"}]',
        "REMEDIATION_WORKERS__REVOKE_STUCK": "true",
        "REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES": '["fuzz"]',
        "REMEDIATION_POSTGRES__CANCEL_LONG_QUERIES": "true",
    }


class Fuzz:
    """The runner under test, the dispatcher it talks to, and what it left behind."""

    def __init__(self, settings: Settings, state: redis.Redis) -> None:
        self.state = state
        self.dispatched: list[tuple[str, dict[str, Any], Trigger | None]] = []
        self.runner = Runner(settings, self.dispatch)

    def dispatch(self, task: str, kwargs: dict[str, Any], trigger: Trigger | None) -> None:
        self.dispatched.append((task, kwargs, trigger))

    @staticmethod
    def task_id(action: str) -> str:
        return f"fuzz-{action}-{uuid.uuid4().hex}"

    def keys(self) -> set[bytes]:
        return set(self.state.scan_iter(count=1000))

    def action_rows(self, task_id: str) -> list[dict[str, Any]]:
        return self.runner.store.query(
            "SELECT id, decision_id, target, outcome, params::text AS params, error,"
            " result::text AS result FROM action_runs WHERE task_id = %s ORDER BY id",
            (task_id,),
        )

    def decision_rows(self, task_id: str) -> list[dict[str, Any]]:
        return self.runner.store.query(
            "SELECT id, decision, guard, reason, resource, idempotency_key"
            " FROM guard_decisions WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
