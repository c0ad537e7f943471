"""Runbook 002 "Disk Space Issues": clean up old log and temporary files, allow-listed only.

Only files under REMEDIATION_HOST__CLEANUP_DIRS are touched. Symlinks are never followed:
the walk does not descend into linked folders, linked files are skipped, and every file
is reached again at action time through directory descriptors opened with O_NOFOLLOW
from the resolved root, so swapping a folder for a symlink between walk and delete
fails instead of escaping the root.
"""

from __future__ import annotations

import fnmatch
import gzip
import os
import shutil
import socket
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from pydantic import Field

from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical, self_target
from remediation.settings import HostSettings

DIRS_VAR = "REMEDIATION_HOST__CLEANUP_DIRS"
MAX_EXAMINED = 200_000
"""Directory entries examined per run; the rest waits for the next run."""
MAX_LISTED = 50
"""Files named in the result (the counts cover all of them)."""
MAX_ERRORS_LISTED = 10
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CleanupDiskParams(ActionParams):
    dirs: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        None, min_length=1, max_length=50, description=f"a subset of {DIRS_VAR}; default all"
    )


class _Changed(Exception):
    """The file is not the one the walk saw any more; leave it."""


@dataclass(order=True)
class _Candidate:
    mtime: float
    root: str  # as configured
    real_root: str
    rel: str
    size: int
    ident: tuple[int, int]  # (st_dev, st_ino) seen by the walk


@dataclass
class _Run:
    cfg: HostSettings
    cutoff: float
    freed: int = 0
    budget_used: int = 0
    touched: int = 0
    files: dict[str, list[str]] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    examined: int = 0
    truncated: bool = False


def resolve_dirs(ctx: CheckContext, params: CleanupDiskParams) -> Resolved:
    """Target "self" and the folders that will be cleaned, as configured: the configured
    ones the call names (compared after os.path.normpath; all by default), each once, in
    configured order.

    Refused: another target, CLEANUP_DIRS empty, a named folder not in it, or a folder
    that is (or links to) the root folder /."""
    target = self_target(params.target, "cleanup_disk")
    cfg = ctx.settings.host
    if not cfg.cleanup_dirs:
        raise Refused(f"no folder may be cleaned, {DIRS_VAR} is empty")
    configured: dict[str, str] = {}
    for folder in cfg.cleanup_dirs:
        configured.setdefault(os.path.normpath(folder), folder)
    wanted = set(configured) if params.dirs is None else {os.path.normpath(d) for d in params.dirs}
    unknown = sorted(d for d in params.dirs or () if os.path.normpath(d) not in configured)
    if unknown:
        raise Refused(f"{_shown(unknown)} not in {DIRS_VAR} ({_shown(cfg.cleanup_dirs)})")
    dirs = [folder for norm, folder in configured.items() if norm in wanted]
    root = [folder for folder in dirs if os.path.realpath(folder) == os.sep]
    if root:
        raise Refused(f"{DIRS_VAR} names the root folder / ({root[0]!r}); nothing is cleaned")
    return canonical(params, target=target, dirs=dirs)


def _shown(folders: list[str], most: int = 10) -> str:
    """Folders as quoted in a refusal: at most ``most``, each cut at 200 characters."""
    cut = [f if len(f) <= 200 else f[:200] + "..." for f in folders[:most]]
    return f"{cut}" + (f" and {len(folders) - most} more" if len(folders) > most else "")


def _resource(params: CleanupDiskParams) -> str:
    """One lock and cooldown per host, whatever folders a call names; hosts never wait on
    each other (the action runs on the worker that receives it)."""
    return "host:" + socket.gethostname()


def _inside(path: str, real_root: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), real_root]) == real_root


def _kind(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "symlinks"
    return None if stat.S_ISREG(st.st_mode) else "not_regular"


def _wanted(run: _Run, name: str, st: os.stat_result) -> str | None:
    """Why a regular file is left alone, or None when it is a candidate."""
    if not any(fnmatch.fnmatchcase(name, p) for p in run.cfg.cleanup_patterns):
        return "not_matching"
    if run.cfg.cleanup_mode == "gzip" and name.endswith(".gz"):
        return "compressed"
    if st.st_mtime > run.cutoff:
        return "too_new"
    if st.st_nlink > 1:  # another name keeps the data: nothing freed, and not ours alone
        return "hardlinked"
    return None


def _walk(run: _Run, root: str) -> list[_Candidate]:
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        run.errors.append(f"{root}: not a folder")
        return []
    found: list[_Candidate] = []
    for dirpath, dirnames, filenames in os.walk(real_root, followlinks=False):
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        run.skipped["symlinks"] += len(linked)
        for name in filenames:
            run.examined += 1
            if run.examined > MAX_EXAMINED:
                run.truncated = True
                return found
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue  # gone since listed
            why = _kind(st) or _wanted(run, name, st)
            if why is None and not _inside(path, real_root):
                why = "outside_root"
            if why:
                run.skipped[why] += 1
                continue
            rel = os.path.relpath(path, real_root)
            found.append(
                _Candidate(st.st_mtime, root, real_root, rel, st.st_size, (st.st_dev, st.st_ino))
            )
    return found


def _open_parent(real_root: str, rel: str) -> int:
    """A descriptor of rel's folder reached one component at a time, never via a symlink."""
    fd = os.open(real_root, _DIR_FLAGS)
    try:
        for part in os.path.dirname(rel).split(os.sep):
            if part:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _same(dir_fd: int, name: str, c: _Candidate) -> bool:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == c.ident and st.st_nlink == 1


def _gzip(dir_fd: int, name: str, c: _Candidate) -> int:
    """name -> name.gz beside it, same mode and mtime, fsynced before the original goes.
    Returns the bytes freed (original size minus compressed size)."""
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(src, "rb") as fin:
        before = os.fstat(fin.fileno())
        if (before.st_dev, before.st_ino) != c.ident or not stat.S_ISREG(before.st_mode):
            raise _Changed
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        mode = stat.S_IMODE(before.st_mode) & 0o777  # never setuid, setgid or sticky
        dst = os.open(name + ".gz", flags, mode, dir_fd=dir_fd)
        try:
            with os.fdopen(dst, "wb") as raw:
                with gzip.GzipFile(
                    filename=name, mode="wb", fileobj=raw, mtime=int(before.st_mtime)
                ) as gz:
                    shutil.copyfileobj(fin, gz, 1 << 20)
                raw.flush()
                os.utime(raw.fileno(), ns=(before.st_atime_ns, before.st_mtime_ns))
                os.fsync(raw.fileno())
                written = os.fstat(raw.fileno()).st_size
            after = os.fstat(fin.fileno())
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise _Changed  # written to while compressing: keep the original
            if not _same(dir_fd, name, c):
                raise _Changed
        except BaseException:
            os.unlink(name + ".gz", dir_fd=dir_fd)
            raise
    os.fsync(dir_fd)  # the .gz entry is durable before the original goes
    os.unlink(name, dir_fd=dir_fd)
    return max(0, before.st_size - written)


def _process(run: _Run, c: _Candidate) -> None:
    name = os.path.basename(c.rel)
    dir_fd = _open_parent(c.real_root, c.rel)
    try:
        if not _same(dir_fd, name, c):
            raise _Changed
        if run.cfg.cleanup_mode == "gzip":
            freed = _gzip(dir_fd, name, c)
        else:
            os.unlink(name, dir_fd=dir_fd)
            freed = c.size
    finally:
        os.close(dir_fd)
    run.freed += freed
    run.touched += 1
    if run.touched <= MAX_LISTED:
        run.files.setdefault(c.root, []).append(c.rel)


def _apply(run: _Run, candidates: list[_Candidate]) -> None:
    cap = run.cfg.cleanup_max_bytes_per_run
    for i, c in enumerate(sorted(candidates)):
        if run.budget_used + c.size > cap:
            run.skipped["over_cap"] += len(candidates) - i
            return
        run.budget_used += c.size
        try:
            _process(run, c)
        except (_Changed, FileNotFoundError):
            run.skipped["changed"] += 1
        except FileExistsError:
            run.skipped["gz_exists"] += 1
        except OSError as exc:
            run.errors.append(f"{c.root}/{c.rel}: {type(exc).__name__}: {exc.strerror or exc}")


@action(
    "cleanup_disk",
    resolve=resolve_dirs,
    resource=_resource,
    cooldown=timedelta(minutes=10),
    max_per_hour=4,
)
def cleanup_disk(ctx: ActionContext, params: CleanupDiskParams) -> ActionResult:
    """Delete (or gzip) old log and temporary files in the allow-listed folders (runbook 002).

    Only REMEDIATION_HOST__CLEANUP_DIRS (empty: nothing is touched; a call may name a
    subset), only files matching CLEANUP_PATTERNS and older than CLEANUP_RETENTION_DAYS,
    oldest first, until CLEANUP_MAX_BYTES_PER_RUN bytes would be exceeded. CLEANUP_MODE
    gzip compresses to name.gz (same mtime) and removes the original once the .gz is on
    disk. Symlinks are never followed, hard-linked files are left, and nothing outside
    the folders is ever touched. The target is always "self"; a folder not configured is
    refused before any guard. Runs on the worker that receives it (one lock and cooldown
    per host): route it to the host. A .gz never carries setuid, setgid or sticky bits."""
    cfg = ctx.settings.host
    dirs: list[str] = resolve_dirs(ctx, params).params.dirs  # again: a folder now a link to /
    run = _Run(cfg, cutoff=time.time() - cfg.cleanup_retention_days * 86400)
    candidates = [c for d in dirs for c in _walk(run, d)]
    _apply(run, candidates)
    verb = "compressed" if cfg.cleanup_mode == "gzip" else "deleted"
    summary = f"{verb} {run.touched} file(s), freed {run.freed} bytes"
    if run.errors:
        summary += f"; {len(run.errors)} error(s): {run.errors[0]}"
    detail: dict[str, Any] = {
        "mode": cfg.cleanup_mode,
        "freed_bytes": run.freed,
        "touched": run.touched,
        "files": run.files,
        "skipped": dict(run.skipped),
        "errors": run.errors[:MAX_ERRORS_LISTED],
        "examined": run.examined,
        "walk_truncated": run.truncated,
    }
    return ActionResult(
        ok=not run.errors or run.touched > 0,
        changed=run.touched > 0,
        summary=summary,
        detail=detail,
    )
