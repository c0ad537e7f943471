"""`python -m demo` (make demo): the price-monitoring scraper of runbook 001 in miniature,
watched by the real remediator, broken one fault at a time."""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import psycopg
import redis

from demo.common import APP_DB, AUDIT_DB, BIN, LOCK_ID, REDIS_DB_BASE, DemoError, say
from demo.faults import Faults
from remediation.errors import ConfigError
from remediation.redact import redact_text
from remediation.settings import load_settings

__all__ = ["LOCK_ID", "Demo", "DemoError", "main"]


class Demo(Faults):
    """One run of the demo: the miniature (demo.miniature), the remediator on it
    (demo.remediator) and the faults injected (demo.faults)."""


@contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does: through the clean-up."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    """Run the demo: exit 0 when every injected fault was remediated and verified, 1 when one
    was not, 2 when the demo could not start, 130 when interrupted."""
    args = _parser().parse_args(argv)
    started = time.monotonic()
    try:
        settings = load_settings()
    except ConfigError as exc:
        say(f"demo: {redact_text(str(exc))}")
        return 2
    audit = settings.audit_dsn.get_secret_value()
    state = settings.state_redis_url.get_secret_value()
    scratch = Path(tempfile.mkdtemp(prefix="remediation-demo-"))
    demo: Demo | None = None
    code = 2
    try:
        with _terminated_as_interrupt():
            demo = Demo(audit, state, settings.containers.docker_url, scratch, args.redis_db_base)
            code = _run(demo)
    except (
        DemoError,
        redis.RedisError,
        psycopg.Error,
        docker.errors.DockerException,
        OSError,
    ) as exc:
        say(f"demo: {redact_text(str(exc))}")
    except KeyboardInterrupt:
        say("\ndemo: interrupted")
        code = 130
    finally:
        _clean_up(demo, scratch)
        say(f"Total run time: {time.monotonic() - started:.0f} s")
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--redis-db-base",
        type=int,
        choices=range(0, 13),
        default=REDIS_DB_BASE,
        metavar="N",
        help=f"the demo's Redis databases are N to N+3 of the state Redis (default {REDIS_DB_BASE})",
    )
    return parser


def _clean_up(demo: Demo | None, scratch: Path) -> None:
    """Stop and remove what the demo started (when it got as far as claiming its Redis
    databases), say what was kept, and let the next demo start."""
    if demo is not None and demo.claimed:
        say("\nStopping worker, beat, watch, scraper, proxies and the shop...")
        demo.stop()
        say(
            f"Removed the database {APP_DB} and the demo's Redis keys (databases {demo.db_range})."
            f" Kept the audit database {AUDIT_DB} for `remediation history` / `report`:\n"
            f"  REMEDIATION_AUDIT_DSN={redact_text(demo.audit_dsn)} .venv/bin/remediation"
            f" history\n  remove it with: psql -c 'DROP DATABASE {AUDIT_DB}' (or the next"
            " `make demo` replaces it)"
        )
        say(f"Logs kept in {scratch} (rm -r {scratch} removes them).")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    if demo is not None and demo.lock_conn is not None:
        demo.lock_conn.close()  # the next demo may start


def _run(demo: Demo) -> int:
    say("== make demo: a price-monitoring scraper (runbook 001) in miniature ==")
    no_cache = demo.build()
    no_docker = demo.start_container()
    demo.start_remediator()
    say("scraper: scraping through the active proxy set; every check passes. Breaking things:")
    ok = demo.break_things(no_cache, no_docker)
    _report(demo)
    say("\n== summary ==")
    for what, verdict, seconds in demo.results:
        say(f"  {verdict:>13}  {seconds:5.1f} s  {what}")
    say("ALL FAULTS REMEDIATED AND VERIFIED" if ok else "FAILED: not every fault was fixed")
    return 0 if ok else 1


def _report(demo: Demo) -> None:
    say("\n== remediation report ==")
    report = subprocess.run(
        [str(BIN / "remediation"), "report", "--since", "1h"],
        env=demo.remediator_env,
        cwd=demo.scratch,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    say(report.stdout.rstrip() or report.stderr.rstrip())
