"""Growing logs -> the checks that read them: access_log_clients for that log, log_secrets.

Runbook 003 "Review access logs" (a ban within a second of the line, not at the next sweep)
and 004 "Security Check Failures: secrets in logs". The source only says "this log
changed": the checks read incrementally from their own saved offsets
(remediation.security.tail, log_scan), so an event too many costs a read of nothing and an
event missed is found by the next one, or by the catch-up sweep.

How changes are seen: inotify (inotify_simple) on the folders that hold the logs, so a
rotation (rename, then a new file), a truncation (copytruncate) and a file created after
start are all seen; what inotify cannot watch (no inotify, no folder yet, out of watches,
REMEDIATION_WATCH__LOG_INOTIFY=false) is polled with stat (device, inode, size, mtime)
every REMEDIATION_WATCH__LOG_POLL_SECONDS. Every change is judged by comparing stats,
whichever woke us, so both modes make the same events.

Bounded: the configured access logs (at most 50), the secrets globs' matches as the check
sees them (log_scan.matched_files: at most max_files, no symlinks, not the quarantine
folder), at most MAX_WATCHES folders, inotify read READ_BYTES at a time.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import select
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import inotify_simple
import structlog

from remediation.security import log_scan
from remediation.settings import Settings
from remediation.watch.events import CATCH_UP, Closable, Event

ACCESS_CHECK = "access_log_clients"
SECRETS_CHECK = "log_secrets"
SECRETS_RESOURCE = "secrets"
CLOSE_POLL = 0.5
"""events() looks at the close flag at least this often."""
RESWEEP_SECONDS = 5.0
"""With every folder under inotify, a whole stat sweep this often all the same (a missed
event, a glob whose folder part has wildcards)."""
READ_BYTES = 64 << 10
"""One read of the inotify descriptor (whole events only: the kernel never splits one)."""
MAX_WATCHES = 256
MAX_PATH_SHOWN = 200
_F = inotify_simple.flags
MASK = (
    _F.MODIFY
    | _F.CREATE
    | _F.DELETE
    | _F.MOVED_FROM
    | _F.MOVED_TO
    | _F.DELETE_SELF
    | _F.MOVE_SELF
    | _F.ONLYDIR
    | _F.EXCL_UNLINK
)
NAMES_CHANGED = _F.CREATE | _F.DELETE | _F.MOVED_FROM | _F.MOVED_TO
SWEEP_NOW = _F.Q_OVERFLOW | _F.IGNORED | _F.DELETE_SELF | _F.MOVE_SELF


@dataclass(frozen=True)
class Seen:
    """What a stat said about a file."""

    dev: int
    ino: int
    size: int
    mtime: float


def change(old: Seen | None, new: Seen | None) -> str | None:
    """The kind of change between two stats of one name, None for none worth a check: grew,
    truncated (copytruncate), rotated (another file under the name, or the name gone)."""
    if new is None:
        return None if old is None else "rotated"
    if old is None:
        return "grew" if new.size > 0 else None
    if (old.dev, old.ino) != (new.dev, new.ino):
        return "rotated"
    if new.size < old.size:
        return "truncated"
    return "grew" if new.size > old.size else None


def stat_of(path: str, follow: bool) -> Seen | None:
    """The stat of a regular file (``follow``: through a symlink, as the access check opens
    its log by name; else a symlink is no file, as log_scan.matched_files has it)."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return Seen(st.st_dev, st.st_ino, st.st_size, st.st_mtime)


def _when(seen: Seen | None, now: float) -> float:
    """The event's time: the write's (mtime) when it is plausible, else now."""
    if seen is not None and now - 60 <= seen.mtime <= now:
        return seen.mtime
    return now


class LogSource(Closable):
    """Access logs (REMEDIATION_ACCESS__LOGS) and the secrets globs (REMEDIATION_SECRETS__FILES)."""

    name = "logs"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.access: dict[str, str] = {
            log.name: os.path.abspath(log.path) for log in settings.access.logs
        }
        self._names: dict[str, list[str]] = {}  # access log path -> the logs' names
        for name, path in self.access.items():
            self._names.setdefault(path, []).append(name)
        self._alias: dict[str, set[str]] = {}  # a name inotify reports -> access log paths
        secrets = settings.secrets
        self.patterns = [os.path.abspath(p) for p in secrets.files]
        self.max_files, self.quarantine = secrets.max_files, secrets.quarantine_dir
        self.poll = settings.watch.log_poll_seconds
        self.use_inotify = settings.watch.log_inotify
        self.log = structlog.get_logger("remediation.watch").bind(source=self.name)
        self.mode = ""
        """"inotify" (every wanted folder watched), "inotify+poll" or "poll"."""
        self._lock = threading.Lock()
        self._notify: inotify_simple.INotify | None = None
        self._iterating = False
        self._dirs: dict[int, str] = {}  # watch descriptor -> folder
        self._seen: dict[str, Seen | None] = {}  # access log path -> last stat
        self._secrets: dict[str, Seen | None] = {}  # matched secrets file -> last stat
        self._next_sweep = 0.0

    # --- the Source protocol --------------------------------------------------------------

    def connect(self) -> None:
        """Watch the folders (or decide to poll), then take the stats changes are judged
        against: a change after the watch is added is an event, one before is the catch-up's."""
        self._release()
        self.closed.clear()
        if self.use_inotify:
            try:
                with self._lock:
                    self._notify = inotify_simple.INotify(nonblocking=True)
            except OSError as exc:
                self.log.warning("no inotify: polling the logs", error=str(exc))
        self._alias = {}
        for path in self._names:  # a symlinked log is written in its target's folder
            for alias in (path, os.path.realpath(path)):
                self._alias.setdefault(alias, set()).add(path)
        self._watch_folders()
        self._seen = {path: stat_of(path, True) for path in self._names}
        self._secrets = {path: stat_of(path, False) for path in self._matched()}
        self._next_sweep = time.monotonic() + self._sweep_every()
        self.log.info(
            "watching logs",
            mode=self.mode,
            folders=len(self._dirs),
            access_logs=len(self.access),
            secrets_files=len(self._secrets),
        )

    def catch_up(self) -> list[Event]:
        now = time.time()
        out = [
            Event(self.name, CATCH_UP, ACCESS_CHECK, f"access/{name}", {"target": name}, now)
            for name in self.access
        ]
        if self.patterns:
            out.append(Event(self.name, CATCH_UP, SECRETS_CHECK, SECRETS_RESOURCE, {}, now))
        return out

    def events(self) -> Iterator[Event]:
        with self._lock:
            self._iterating = True
        try:
            while not self.closed.is_set():
                yield from self._wake()
        finally:
            with self._lock:
                self._iterating = False
            if self.closed.is_set():
                self._release()

    def close(self) -> None:
        """From any thread: events() ends within CLOSE_POLL and gives the descriptor back
        (closed here at once when no iteration holds it)."""
        super().close()
        with self._lock:
            idle = not self._iterating
        if idle:
            self._release()

    # --- waking up ------------------------------------------------------------------------

    def _wake(self) -> Iterator[Event]:
        """Wait (at most CLOSE_POLL) for inotify or the next sweep; the events of what
        changed."""
        wait = min(CLOSE_POLL, max(0.0, self._next_sweep - time.monotonic()))
        found: list[inotify_simple.Event] | None = []
        if self._notify is None:
            self.closed.wait(wait)
        else:
            found = self._read(wait)
        if self.closed.is_set():
            return
        if found is None or time.monotonic() >= self._next_sweep:
            yield from self._sweep()
        elif found:
            yield from self._notified(found)

    def _read(self, wait: float) -> list[inotify_simple.Event] | None:
        """The inotify events waiting (one bounded read); None: sweep (queue overflow, a
        folder gone)."""
        notify = self._notify
        if notify is None:
            return None
        try:
            ready, _, _ = select.select([notify.fileno()], [], [], wait)
            data = os.read(notify.fileno(), READ_BYTES) if ready else b""
        except BlockingIOError:
            data = b""
        except (OSError, ValueError):  # closed under us: close() won the race
            return []
        found: list[inotify_simple.Event] = inotify_simple.parse_events(data)
        if any(e.mask & SWEEP_NOW for e in found):
            self._forget_gone(found)
            return None
        return found

    def _notified(self, found: list[inotify_simple.Event]) -> Iterator[Event]:
        access: set[str] = set()
        files: set[str] = set()
        reglob = False
        for e in found:
            folder = self._dirs.get(e.wd)
            if folder is None or not e.name:
                continue
            path = os.path.join(folder, e.name)
            access.update(self._alias.get(path, ()))
            if path in self._secrets:
                files.add(path)
            elif e.mask & NAMES_CHANGED and self._may_match(path):
                reglob = True
        yield from self._access_events(access)
        if reglob:
            files.update(self._rematch())
        yield from self._secret_events(files)

    # --- sweeps ---------------------------------------------------------------------------

    def _sweep(self) -> Iterator[Event]:
        """Every name stat'ed again (and folders that appeared watched)."""
        if self._notify is not None and len(self._dirs) < len(self._wanted_folders()):
            self._watch_folders()
        self._next_sweep = time.monotonic() + self._sweep_every()
        yield from self._access_events(set(self._seen))
        yield from self._secret_events(set(self._secrets) | self._rematch())

    def _sweep_every(self) -> float:
        return RESWEEP_SECONDS if self.mode == "inotify" else self.poll

    def _access_events(self, paths: set[str]) -> Iterator[Event]:
        now = time.time()
        for path in sorted(paths):
            new = stat_of(path, True)
            kind = change(self._seen.get(path), new)
            self._seen[path] = new
            if kind is None:
                continue
            for name in self._names[path]:
                yield Event(
                    self.name,
                    kind,
                    ACCESS_CHECK,
                    f"access/{name}",
                    {"target": name},
                    _when(new, now),
                    {"path": path[-MAX_PATH_SHOWN:], "size": new.size if new else None},
                )

    def _secret_events(self, paths: set[str]) -> Iterator[Event]:
        now = time.time()
        for path in sorted(paths):
            if path not in self._secrets:
                continue
            new = stat_of(path, False)
            kind = change(self._secrets[path], new)
            self._secrets[path] = new
            if kind is None or new is None:  # a matched file gone: nothing left to read
                continue
            yield Event(
                self.name,
                kind,
                SECRETS_CHECK,
                SECRETS_RESOURCE,
                {},
                _when(new, now),
                {"file": path[-MAX_PATH_SHOWN:], "size": new.size},
            )

    # --- the secrets globs ----------------------------------------------------------------

    def _matched(self) -> list[str]:
        if not self.patterns:
            return []
        files, _ = log_scan.matched_files(self.patterns, self.max_files, self.quarantine)
        return files

    def _rematch(self) -> set[str]:
        """The files the globs match now that were not tracked (tracked from "nothing", so
        one with content is an event); files no longer matched are dropped."""
        matched = set(self._matched())
        fresh = matched - set(self._secrets)
        for gone in set(self._secrets) - matched:
            del self._secrets[gone]
        for path in fresh:
            self._secrets[path] = None
        return fresh

    def _may_match(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in self.patterns)

    # --- folders --------------------------------------------------------------------------

    def _wanted_folders(self) -> list[str]:
        wanted: set[str] = set()
        for path in self.access.values():
            wanted.add(os.path.dirname(path))
            wanted.add(os.path.dirname(os.path.realpath(path)))
        for pattern in self.patterns:
            folder = os.path.dirname(pattern)
            if not glob.has_magic(folder):
                wanted.add(folder)
        wanted.update(os.path.dirname(p) for p in self._secrets)
        return sorted(wanted)

    def _watch_folders(self) -> None:
        """Add a watch on each wanted folder not yet watched; mode says whether the sweep
        must poll (a folder left unwatched) or is only the safety net."""
        notify = self._notify
        wanted = self._wanted_folders()
        if notify is not None:
            watched = set(self._dirs.values())
            for folder in wanted:
                if folder in watched or len(self._dirs) >= MAX_WATCHES:
                    continue
                try:
                    self._dirs[notify.add_watch(folder, MASK)] = folder
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                        self.log.warning("cannot watch a folder", folder=folder, error=str(exc))
        if notify is None:
            self.mode = "poll"
        elif set(self._dirs.values()) >= set(wanted) and not self._magic_folders():
            self.mode = "inotify"
        else:
            self.mode = "inotify+poll"

    def _magic_folders(self) -> bool:
        return any(glob.has_magic(os.path.dirname(p)) for p in self.patterns)

    def _forget_gone(self, found: list[inotify_simple.Event]) -> None:
        for e in found:
            if e.mask & _F.IGNORED:
                self._dirs.pop(e.wd, None)
        if self._notify is not None:
            self._watch_folders()

    def _release(self) -> None:
        with self._lock:
            notify, self._notify = self._notify, None
            self._dirs = {}
        if notify is not None:
            try:
                notify.close()
            except OSError:
                pass  # already closed
