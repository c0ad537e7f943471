"""How one audit row reaches PostgreSQL: written at once, or spooled while it does not answer.

Every row gets its id and its event time from this process, so a write can be repeated
(INSERT ... ON CONFLICT (id) DO NOTHING, updates by id): when PostgreSQL does not answer,
the write goes to the local spool (remediation.audit.spool) and is replayed later with the
same id and time, exactly once, before any newer write of this process.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

from remediation.audit.connection import APP, CONNECT_TIMEOUT, discard_pool, pool, with_silence
from remediation.audit.schema import RowMissing, new_id, run_write, unreachable
from remediation.audit.spool import ReplayResult, Spool, StopReplay
from remediation.errors import AuditError

_DOWN_UNTIL: dict[tuple[int, str], float] = {}
_NEXT_REPLAY: dict[tuple[int, str], float] = {}

DOWN_SECONDS = 1.0
"""After PostgreSQL failed to answer, writes go straight to the spool for this long."""
STUCK_RETRY_SECONDS = 5.0
"""How often a replay is retried for records that failed for a reason other than the network."""
LOCK_WAIT_SECONDS = 5.0
"""How long a write waits for another process's replay round before spooling instead."""


def _replay_one(conn: psycopg.Connection[Any], record: dict[str, Any]) -> None:
    try:
        run_write(conn, str(record["op"]), dict(record["args"]))
    except (psycopg.Error, OSError) as exc:
        if unreachable(exc):
            raise StopReplay from exc
        raise


class RowWriter:
    """The write path of one audit database, through spool (when there is one) while it is
    down. Without a spool a write PostgreSQL does not take raises AuditError."""

    def __init__(self, dsn: str, spool: Spool | None, log: Any) -> None:
        self.dsn = dsn
        self.spool = spool
        self.log = log

    @property
    def _key(self) -> tuple[int, str]:
        return (os.getpid(), self.dsn)

    def down(self) -> bool:
        """PostgreSQL failed to answer less than DOWN_SECONDS ago."""
        return time.monotonic() < _DOWN_UNTIL.get(self._key, 0.0)

    def mark_down(self) -> None:
        """PostgreSQL did not answer: spool without trying it for DOWN_SECONDS."""
        _DOWN_UNTIL[self._key] = time.monotonic() + DOWN_SECONDS

    def _exec(self, op: str, args: dict[str, Any]) -> None:
        """One direct write; AuditError (cause attached) when it fails."""
        try:
            with pool(self.dsn).connection() as conn:
                for _ in range(3):
                    if run_write(conn, op, args):
                        return
                    args["id"] = new_id()  # another process took this id: never drop the row
        except RowMissing:
            raise
        except (psycopg.Error, OSError) as exc:
            if unreachable(exc):
                discard_pool(self.dsn)
            raise AuditError(f"audit write failed: {type(exc).__name__}") from exc
        raise AuditError("audit write failed: no free id")

    def write(self, op: str, args: dict[str, Any]) -> None:
        """One row (op: a write of remediation.audit.schema) straight to PostgreSQL, or into
        the spool while PostgreSQL is down or older spooled rows must go first."""
        if self.spool is None:
            try:
                self._exec(op, args)
            except RowMissing:
                pass  # as before the spool: an update of a missing row changes nothing
            return
        if not self.down() and self.drain():
            try:
                self._exec(op, args)
                return
            except RowMissing:
                if not self.spool.pending():
                    return
            except AuditError as exc:
                cause = exc.__cause__
                # a parent row not there yet: in this process's spool, or in another host's
                # (a host cut off the network spooled a finding whose action another host
                # runs); the row waits in the spool until its parent is replayed
                fk = isinstance(cause, psycopg.errors.ForeignKeyViolation)
                if not (unreachable(cause) or fk):
                    raise
                if unreachable(cause):
                    self.mark_down()
        self.spool.append({"op": op, "args": args})
        self.log.warning("audit row spooled", op=op, spool=str(self.spool.dir))

    def drain(self) -> bool:
        """Replay what waits before writing directly; False means: spool this write too."""
        assert self.spool is not None
        if not self.spool.pending():
            return True
        stuck_only = not self.spool.own_path().exists()
        if stuck_only and time.monotonic() < _NEXT_REPLAY.get(self._key, 0.0):
            return True
        result = self.replay(LOCK_WAIT_SECONDS)
        if result is None or result.stopped:
            return False
        if result.kept:
            _NEXT_REPLAY[self._key] = time.monotonic() + STUCK_RETRY_SECONDS
        return True

    def replay(self, wait: float) -> ReplayResult | None:
        """Replay the spool on a connection of its own; None when another process kept the
        spool locked for wait seconds."""
        assert self.spool is not None
        try:
            conn = psycopg.connect(
                with_silence(self.dsn),
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name=APP,
            )
        except psycopg.Error:
            self.mark_down()
            return ReplayResult(stopped=True)
        with conn:
            result = self.spool.replay(lambda record: _replay_one(conn, record), wait=wait)
        if result is not None and (result.applied or result.kept or result.dropped):
            self.log.info(
                "audit spool replayed",
                rows=result.applied,
                kept=result.kept,
                torn_lines=result.dropped,
                stopped=result.stopped,
            )
        if result is not None and result.stopped:
            self.mark_down()
        return result
