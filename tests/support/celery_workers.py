"""A real worker that also runs test-only sleeping tasks (the monitored cluster), and what it
is running now."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from tests.support.env import process_env
from tests.support.processes import WorkerProcess
from tests.support.services import RedisServer

RESULT_DB = 11
"""The result backend db (on the test redis-server) of sleeping workers."""


SECRET = "hunter2-task-secret"


SLEEP_MODULE = '''
"""Test-only tasks: sleep for a while (a long-running job)."""
import time

from celery import shared_task


@shared_task(name="test.sleep_for")
def sleep_for(seconds, password=None):
    time.sleep(seconds)
    return seconds


@shared_task(name="test.nap")
def nap(seconds):
    time.sleep(seconds)
    return seconds


@shared_task(name="remediation.act.test_linger")
def linger(seconds):
    """Stands for the remediator's own long task (a VACUUM, a backup) on a shared worker."""
    time.sleep(seconds)
    return seconds
'''


LINGER = "remediation.act.test_linger"


def sleeping_worker(
    tmp: Path,
    redis_server: RedisServer,
    audit_db: str,
    name: str,
    broker_db: int,
    broker_url: str | None = None,
    **env: str,
) -> WorkerProcess:
    """A real worker (concurrency 2) that also imports the test.sleep_for / test.nap tasks
    and remediation.act.test_linger (a long task under the remediator's own prefix). Its
    broker is db broker_db of redis_server (emptied first), or broker_url when given."""
    (tmp / "rem_test_sleep.py").write_text(textwrap.dedent(SLEEP_MODULE))
    if broker_url is None:
        redis_server.empty(broker_db)
    environ = process_env(
        redis_server,
        audit_db,
        REMEDIATION_BROKER_URL=broker_url or redis_server.url(broker_db),
        REMEDIATION_RESULT_BACKEND=redis_server.url(RESULT_DB),
        **env,
    )
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp), environ.get("PYTHONPATH")]))
    return WorkerProcess(environ, name, concurrency=2, extra_args=["-I", "rem_test_sleep"])


def active_ids(app: Any) -> set[str]:
    """Ids of the tasks the cluster's workers are running now."""
    active = app.control.inspect(timeout=1).active() or {}
    return {str(t["id"]) for tasks in active.values() for t in tasks or ()}
