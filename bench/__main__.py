"""Run every benchmark and print one JSON document with the results."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from bench import (
    access_log,
    approvals,
    backups,
    beat_precision,
    dead_tuples,
    headers,
    intake,
    log_secrets,
    pipeline,
    proxies,
    redaction,
    retention,
    spool,
    watch_celery,
    watch_docker,
    watch_logs,
)


def main() -> int:
    results = {
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
        },
        "dead_tuples": dead_tuples.run(),
        "backups": backups.run(),
        "proxies": proxies.run(),
        "headers": headers.run(),
        "redaction": redaction.run(),
        "pipeline": pipeline.run(),
        "intake": intake.run(),
        "approvals": approvals.run(),
        "spool": spool.run(),
        "access_log": access_log.run(),
        "log_secrets": log_secrets.run(),
        "retention": retention.run(),
        "beat_precision": beat_precision.run(),
        "watch_logs": watch_logs.run(),
        "watch_docker": watch_docker.run(),
        "watch_celery": watch_celery.run(),
    }
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
