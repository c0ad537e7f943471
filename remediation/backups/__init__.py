"""Backups on disk: PostgreSQL tools, their environment, manifests, checksums, retention.

Layout under ``REMEDIATION_BACKUP__DIR``::

    <target>/<target>-YYYYmmddTHHMMSSZ.dump         pg_dump -Fc of one target
    <target>/<target>-YYYYmmddTHHMMSSZ.dump.json    its manifest: checksum, row counts, verification
    files/files-YYYYmmddTHHMMSSZ.tar.gz             backup_files archive (+ .sha256, .json)

Every manifest carries an "hmac" (remediation.signing, domain "manifest", key
REMEDIATION_SIGNING_KEY) over everything else in it. A manifest without one, or whose mac
does not match, is not trusted: its checksum, row counts and verification mean nothing.

Nothing else is ever deleted: retention only removes regular files whose names match these
patterns, inside these folders. Work in progress is written to a hidden ``.<name>.partial``
and renamed into place, so a half-written dump never looks like a backup.

The package: ``layout`` (names, folders, patterns), ``manifest`` (checksums, JSON,
authenticated manifests), ``files`` (locks, listing, retention, row counts, scratch
databases); the PostgreSQL client tools and the child processes that run them live here.
Every name is re-exported: ``backups.X`` works for all of them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg

from remediation.backups.files import (
    USER_TABLES_SQL,
    Backup,
    Retention,
    apply_archive_retention,
    apply_retention,
    count_rows,
    create_scratch,
    drop_database,
    drop_stale_scratch,
    dump_files,
    folder_lock,
    list_backups,
    plan_retention,
    remove_ours,
    scratch_created,
    scratch_name,
    table_rows,
    user_tables,
)
from remediation.backups.layout import (
    ARCHIVE_OURS_RE,
    ARCHIVE_RE,
    CHUNK,
    FILES_DIR,
    LOCK_WAIT,
    MANIFEST_FORMAT,
    QUARANTINE,
    SCRATCH_PREFIX,
    STAMP,
    BackupError,
    dump_name,
    dump_pattern,
    files_dir,
    manifest_path,
    now,
    ours_pattern,
    parse_stamp,
    partial_path,
    stamp,
    target_dir,
)
from remediation.backups.manifest import (
    fsync_dir,
    fsync_file,
    open_dump,
    private_file,
    read_json,
    read_manifest,
    seal,
    sha256_fd,
    sha256_file,
    write_json,
    write_manifest,
)
from remediation.redact import redact_text

__all__ = [
    "ARCHIVE_OURS_RE",
    "ARCHIVE_RE",
    "CHILD_LOCALE",
    "CHILD_PATH",
    "CHUNK",
    "FILES_DIR",
    "HIDDEN_KEYWORDS",
    "LIBPQ_FROM_WORKER",
    "LOCK_WAIT",
    "MANIFEST_FORMAT",
    "QUARANTINE",
    "SCRATCH_PREFIX",
    "STAMP",
    "USER_TABLES_SQL",
    "Backup",
    "BackupError",
    "Child",
    "Libpq",
    "Retention",
    "apply_archive_retention",
    "apply_retention",
    "child_env",
    "count_rows",
    "create_scratch",
    "drop_database",
    "drop_stale_scratch",
    "dump_files",
    "dump_name",
    "dump_pattern",
    "files_dir",
    "find_tool",
    "folder_lock",
    "fsync_dir",
    "fsync_file",
    "libpq",
    "list_backups",
    "manifest_path",
    "now",
    "open_dump",
    "ours_pattern",
    "parse_stamp",
    "partial_path",
    "plan_retention",
    "private_file",
    "read_json",
    "read_manifest",
    "remove_ours",
    "scratch_created",
    "scratch_name",
    "seal",
    "sha256_fd",
    "sha256_file",
    "spawn",
    "stamp",
    "table_rows",
    "target_dir",
    "tool_version",
    "user_tables",
    "with_dbname",
    "write_json",
    "write_manifest",
]

# --- PostgreSQL client tools and their environment ----------------------------------------

CHILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH of every child tool (they are started by absolute path; this is for what they run)."""
CHILD_LOCALE = "C.UTF-8"
"""The tools' locale: messages in English whatever the worker's LANG (C when not installed)."""
LIBPQ_FROM_WORKER = tuple(
    (
        "PGHOST PGHOSTADDR PGPORT PGUSER PGOPTIONS PGSSLMODE PGREQUIRESSL "
        "PGSSLNEGOTIATION PGSSLCERT PGSSLKEY PGSSLCERTMODE PGSSLROOTCERT PGSSLCRL "
        "PGSSLCRLDIR PGSSLSNI PGSSLMINPROTOCOLVERSION PGSSLMAXPROTOCOLVERSION "
        "PGREQUIREPEER PGREQUIREAUTH PGCHANNELBINDING PGGSSENCMODE PGKRBSRVNAME PGGSSLIB "
        "PGGSSDELEGATION PGPASSFILE PGSERVICE PGSERVICEFILE PGSYSCONFDIR "
        "PGTARGETSESSIONATTRS PGLOADBALANCEHOSTS"
    ).split()
)
"""libpq variables the worker's own connections follow (where, TLS, GSSAPI, password and
service files: names, never secrets), so a tool connects as the worker does: without them an
operator's PGSSLMODE=verify-full would silently not apply to pg_dump. Never PGPASSWORD: a
tool's password comes from the configured DSN only."""
HIDDEN_KEYWORDS = ("sslpassword",)
"""Secret conninfo keywords libpq reads from no variable: handed over in a private service
file, never on the command line."""
_SERVICE = "remediation"


def child_env(extra: Mapping[str, str] | None = None, *, connects: bool = True) -> dict[str, str]:
    """The whole environment of a child tool, built from scratch: PATH, a locale, HOME and
    TMPDIR (libpq finds ~/.pgpass and ~/.postgresql/ through HOME), for a tool that
    ``connects`` the libpq variables in LIBPQ_FROM_WORKER, then ``extra``. Never a copy of
    os.environ: the worker's settings (REMEDIATION_*: DSNs, keys, tokens) and anything else
    in it stay out of the tools."""
    env = {"PATH": CHILD_PATH, "LC_ALL": CHILD_LOCALE, "LANG": CHILD_LOCALE}
    for name in ("HOME", "TMPDIR", *(LIBPQ_FROM_WORKER if connects else ())):
        value = os.environ.get(name)
        if value is not None:
            env[name] = value
    env.update(extra or {})
    return env


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.parent.name)) or (0,)


@functools.cache
def find_tool(name: str) -> str:
    """pg_dump / pg_restore: on PATH, else in `pg_config --bindir`, else the highest
    /usr/lib/postgresql/<version>/bin (Debian installs them there without the wrappers)."""
    found = shutil.which(name)
    if found:
        return found
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
                env=child_env(connects=False),
            )
            candidates.append(Path(out.stdout.strip()) / name)
    versions = Path("/usr/lib/postgresql").glob(f"*/bin/{name}")
    candidates += sorted(versions, key=_version_key, reverse=True)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise BackupError(
        f"{name} not found on PATH, in `pg_config --bindir` or /usr/lib/postgresql/*/bin"
        " (apt-get install postgresql-client)",
        "tools",
    )


@functools.cache
def tool_version(path: str) -> str:
    """`pg_dump --version`, e.g. 'pg_dump (PostgreSQL) 15.20'."""
    out = subprocess.run(
        [path, "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(connects=False),
    )
    return out.stdout.strip() or out.stderr.strip()


@dataclass(frozen=True)
class Libpq:
    """How a child tool reaches a database: a conninfo without secrets for its command line
    (visible in ps), the tool's whole environment (child_env() plus PGPASSWORD and
    PGOPTIONS from the DSN) and ``hidden`` secrets that have no variable (sslpassword)."""

    conninfo: str
    env: dict[str, str]
    hidden: dict[str, str] = field(default_factory=dict, repr=False)

    def arg(self) -> str:
        return f"--dbname={self.conninfo}"

    @contextlib.contextmanager
    def environment(self, **extra: str) -> Iterator[dict[str, str]]:
        """The tool's environment for one run (``extra`` added); hidden secrets go into a
        service file readable by us only, deleted when the block ends."""
        env = {**self.env, **extra}
        if not self.hidden:
            yield env
            return
        with tempfile.TemporaryDirectory(prefix="rem-libpq-") as tmp:
            path = Path(tmp) / "pg_service.conf"
            with os.fdopen(private_file(path), "w", encoding="utf-8") as f:
                f.write(f"[{_SERVICE}]\n" + "".join(f"{k}={v}\n" for k, v in self.hidden.items()))
            yield {**env, "PGSERVICEFILE": str(path), "PGSERVICE": _SERVICE}


def libpq(dsn: str, *, connect_timeout: int, dbname: str | None = None) -> Libpq:
    """What a child tool needs to connect where ``dsn`` points (optionally to another
    database of the same server), with the password in PGPASSWORD, never in argv."""
    info = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}
    extra = {"PGPASSWORD": info.pop("password")} if "password" in info else {}
    if "options" in info:  # as a variable, so PGOPTIONS added for one run compose with it
        extra["PGOPTIONS"] = info.pop("options")
    hidden = {k: info.pop(k) for k in HIDDEN_KEYWORDS if k in info}
    env = child_env(extra)
    if hidden and (
        "service" in info
        or "PGSERVICE" in env
        or any(set(v) & {"\n", "\r"} for v in hidden.values())
    ):
        raise BackupError(
            "the DSN's sslpassword cannot be handed to pg_dump/pg_restore along with a"
            " service (service=, PGSERVICE) or with a line break in it",
            "tools",
        )
    info.setdefault("connect_timeout", str(connect_timeout))
    info["application_name"] = "remediation-backup"
    if dbname is not None:
        info["dbname"] = dbname
    return Libpq(psycopg.conninfo.make_conninfo(**info), env, hidden)


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database (for psycopg, not for argv)."""
    info = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def spawn(
    argv: list[str], env: dict[str, str], stderr: IO[bytes], pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """The one place a backup tool is started: an argv list, never a shell; ``env`` is its
    whole environment (nothing of ours is inherited); only ``pass_fds`` stay open in it."""
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
    )


class Child:
    """A running tool whose stderr goes to a temporary file (no pipe to drain, no deadlock).

    Use as a context manager: leaving the block kills the tool if it is still running."""

    def __init__(
        self,
        step: str,
        argv: list[str],
        env: dict[str, str],
        *,
        nice: int = 0,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.step, self.tool = step, Path(argv[0]).name
        self.err = tempfile.TemporaryFile()
        try:
            self.proc = spawn(argv, env, self.err, pass_fds)
        except BaseException:
            self.err.close()
            raise
        if nice:  # let the restore have the CPU; this one fills the gaps
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, nice)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.err.close()

    def wait(self, timeout: float) -> None:
        """Raise BackupError naming the step on a timeout or a non-zero exit."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BackupError(
                f"{self.tool} timed out after {timeout:.0f} s"
                " (REMEDIATION_BACKUP__TIMEOUT_SECONDS)",
                self.step,
            ) from None
        if code != 0:
            raise BackupError(f"{self.tool} exited with {code}: {self.stderr()}", self.step)

    def stderr(self, limit: int = 1500) -> str:
        self.err.seek(0)
        text = self.err.read().decode(errors="replace").strip()
        if len(text) > limit:
            text = text[: limit // 2] + " ... " + text[-limit // 2 :]
        return redact_text(text) or "(no message)"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
