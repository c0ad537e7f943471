"""One advisory file lock (flock) for the places that serialise work between processes on
a host: backup folders, the audit spool's replay, the backoff mirror file."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

POLL_SECONDS = 0.02


@contextmanager
def file_lock(path: Path, wait: float = 0.0) -> Iterator[bool]:
    """An exclusive flock on path (created 0600 if missing), tried until ``wait`` seconds
    pass: yields True while held, False if another process kept it. Released on exit."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(POLL_SECONDS)
        yield True
    finally:
        os.close(fd)
