"""Beat schedule of the marketplace API profile (runbook 003).

REMEDIATION_SCHEDULE_MODULE=examples.marketplace_api.schedule. Starts from the shipped
beat_schedule.py (installed with the package, so importable from anywhere): its HTTP,
container, access-log, API-key and dependency entries read the settings of profile.env as
they are, and the remediator keeps watching its own audit database and state Redis as under
`make run`. The service has no PostgreSQL or Redis of its own, so no target is added.
"""

from __future__ import annotations

import copy
from typing import Any

from beat_schedule import SCHEDULE as BASE

SCHEDULE: dict[str, dict[str, Any]] = copy.deepcopy(BASE)

SCHEDULE.update(
    {
        # runbook 003 "Backup and Recovery: backup SQLite databases, backup environment
        # variables": daily at 02:30 UTC, the files of REMEDIATION_BACKUP__FILE_PATHS.
        "daily-file-backup": {
            "task": "remediation.act.backup_files",
            "schedule": "30 2 * * *",
            "kwargs": {},
        },
    }
)
