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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from remediation import signing
from remediation.errors import RemediationError
from remediation.filelock import file_lock
from remediation.redact import redact_text

STAMP = "%Y%m%dT%H%M%SZ"
_STAMP_RE = r"(\d{8}T\d{6}Z)"
FILES_DIR = "files"
QUARANTINE = "quarantine"
"""A target folder's subfolder for dumps that failed verification (kept for the operator)."""
MANIFEST_FORMAT = 1
CHUNK = 1 << 20
# How long pg_dump (and our counting transaction) wait for a table lock before giving up:
# a dump queued behind an ALTER TABLE would otherwise block the application behind it.
LOCK_WAIT = "60s"
SCRATCH_PREFIX = "rem_verify_"
_SCRATCH_RE = re.compile(r"^rem_verify_([0-9a-f]{8})[0-9a-f]{8}$")


class BackupError(RemediationError):
    """A backup or verification step failed; ``step`` names it (checksum, restore ...)."""

    def __init__(self, message: str, step: str = "") -> None:
        super().__init__(message)
        self.step = step


# --- names and places ---------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(STAMP)


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, STAMP).replace(tzinfo=UTC)


def _inside(root: str | Path, name: str) -> Path:
    if not name or name.startswith(".") or "/" in name or "\x00" in name:
        raise BackupError(f"{name!r} cannot name a folder inside the backup directory")
    return Path(os.path.abspath(root)) / name


def target_dir(root: str | Path, target: str) -> Path:
    """<backup dir>/<target>: target names are case-insensitive, as in the settings."""
    return _inside(root, target.lower())


def files_dir(root: str | Path) -> Path:
    return _inside(root, FILES_DIR)


def dump_name(target: str, when: datetime) -> str:
    return f"{target.lower()}-{stamp(when)}.dump"


def dump_pattern(target: str) -> re.Pattern[str]:
    """Dumps of one target (group 1: the timestamp)."""
    return re.compile(rf"^{re.escape(target.lower())}-{_STAMP_RE}\.dump$")


def ours_pattern(target: str) -> re.Pattern[str]:
    """Every file backup_database may write for a target: dump, manifest, partial."""
    return re.compile(rf"^\.?{re.escape(target.lower())}-{_STAMP_RE}\.dump(\.json|\.partial)?$")


ARCHIVE_RE = re.compile(rf"^files-{_STAMP_RE}\.tar\.gz$")
ARCHIVE_OURS_RE = re.compile(rf"^\.?files-{_STAMP_RE}\.tar\.gz(\.sha256|\.json)?(\.partial)?$")


def manifest_path(dump: Path) -> Path:
    return dump.with_name(dump.name + ".json")


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


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


# --- files: checksums, JSON, locks --------------------------------------------------------


def sha256_fd(fd: int) -> str:
    """Streamed sha256 of an open file from its start, 1 MiB at a time (pread: the file's
    offset is left alone; hashlib releases the GIL meanwhile)."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Streamed sha256 of a file (not followed if it is a symlink)."""
    with open_dump(path) as fd:
        return sha256_fd(fd)


@contextlib.contextmanager
def open_dump(path: Path) -> Iterator[int]:
    """A backup file opened once, read-only, never through a symlink (O_NOFOLLOW), as a file
    descriptor. Whoever checks it and whoever reads it then use this same open file
    (children through pass_fds and /dev/fd/N), so a file put in its place afterwards is
    never read. BackupError (step "checksum") when it cannot be opened or is not a file."""
    try:
        # O_NONBLOCK: a FIFO put in its place does not hang us (and is refused below)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BackupError(f"cannot open {path.name}: {exc.strerror or exc}", "checksum") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BackupError(f"{path.name} is not a regular file", "checksum")
        yield fd
    finally:
        os.close(fd)


def private_file(path: Path) -> int:
    """Create a new file readable by us only (backups hold all the data); return its fd.
    pg_dump and tarfile then write into it, keeping the mode."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically: a temp file in the same folder, fsync, os.replace, fsync dir."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with os.fdopen(private_file(tmp), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def read_json(path: Path) -> dict[str, Any]:
    """A manifest; BackupError (step "manifest") when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"manifest {path.name} is missing", "manifest") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"manifest {path.name} is unreadable: {exc}", "manifest") from None
    if not isinstance(data, dict):
        raise BackupError(f"manifest {path.name} is not a JSON object", "manifest")
    return data


# --- manifests: authenticated --------------------------------------------------------------


def seal(manifest: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """The manifest as written: its JSON form (what a reader gets back) plus "hmac", the
    signature over everything else (domain "manifest")."""
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "hmac"}, default=str))
    return {**body, "hmac": signing.sign(key, "manifest", body)}


def write_manifest(path: Path, manifest: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """Sign and write a manifest atomically; returns it as written."""
    sealed = seal(manifest, key)
    write_json(path, sealed)
    return sealed


def read_manifest(path: Path, key: bytes) -> dict[str, Any]:
    """A manifest whose "hmac" matches; BackupError (step "manifest") when it is missing,
    unreadable, carries no mac or a mac that does not match: then nothing in it is trusted."""
    data = read_json(path)
    mac = data.get("hmac")
    body = {k: v for k, v in data.items() if k != "hmac"}
    if mac is None:
        raise BackupError(
            f"manifest {path.name} is not authenticated: it has no hmac (written without"
            " REMEDIATION_SIGNING_KEY, or before manifests were signed); not trusted",
            "manifest",
        )
    if not signing.valid(key, "manifest", body, mac):
        raise BackupError(
            f"manifest {path.name} is not authenticated: its hmac does not match (edited"
            " after it was written, or signed with another REMEDIATION_SIGNING_KEY); not"
            " trusted",
            "manifest",
        )
    return body


@contextlib.contextmanager
def folder_lock(directory: Path) -> Iterator[bool]:
    """An exclusive flock on <directory>/.lock, not waiting: yields False if another process
    holds it. Keeps a dump's retention from deleting a file a verification is reading."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with file_lock(directory / ".lock") as held:
        yield held


def remove_ours(path: Path, pattern: re.Pattern[str], folder: Path) -> bool:
    """Delete path only if it is a regular file directly in folder whose name matches."""
    if path.parent != folder or not pattern.match(path.name):
        raise BackupError(f"refusing to delete {path}: not one of our backup files")
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


# --- listing and retention ----------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    """One dump on disk with its authenticated manifest (None, with ``error``, when it is
    missing, unreadable or not authenticated: then the dump counts as neither verified nor
    awaiting verification)."""

    path: Path
    taken_at: datetime
    manifest: dict[str, Any] | None
    error: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def verification(self) -> dict[str, Any] | None:
        value = (self.manifest or {}).get("verification")
        return value if isinstance(value, dict) else None

    @property
    def status(self) -> str:
        """verified | failed | unverified | no_manifest."""
        if self.manifest is None:
            return "no_manifest"
        if self.verification is None:
            return "unverified"
        return "verified" if self.verification.get("ok") is True else "failed"

    def age_hours(self, at: datetime) -> float:
        return round((at - self.taken_at).total_seconds() / 3600, 2)


def dump_files(directory: Path, target: str) -> list[tuple[Path, datetime]]:
    """(path, taken at) of a target's dumps in its folder, newest first, without reading
    anything but the folder (regular files only). A missing folder means none."""
    pattern = dump_pattern(target)
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            found.append((Path(entry.path), parse_stamp(match.group(1))))
    return sorted(found, key=lambda found: found[1], reverse=True)


def list_backups(directory: Path, target: str, key: bytes) -> list[Backup]:
    """Dumps of a target in its folder with their manifests, checked with ``key``, newest
    first. A missing folder means none."""
    found = []
    for path, taken_at in dump_files(directory, target):
        try:
            manifest, error = read_manifest(manifest_path(path), key), ""
        except BackupError as exc:
            manifest, error = None, str(exc)
        found.append(Backup(path, taken_at, manifest, error))
    return found


@dataclass(frozen=True)
class Retention:
    """Grandfather-father-son: the newest backup of each of the last N days, ISO weeks and
    months that have one (as restic's --keep-daily/weekly/monthly: a pause in backups does
    not make old ones expire). Within a period a backup that failed verification, or whose
    manifest is not authenticated, is passed over for an older one that is verified or
    awaiting verification. The newest backup and the newest verified one (authenticated
    manifests only) are always kept."""

    daily: int
    weekly: int
    monthly: int
    max_deletions: int = 20


_PERIODS: tuple[Callable[[datetime], Any], ...] = (
    lambda t: t.date(),
    lambda t: t.isocalendar()[:2],
    lambda t: (t.year, t.month),
)


def plan_retention(backups: Sequence[Backup], policy: Retention) -> set[str]:
    """Names of the backups to keep."""
    ordered = sorted(backups, key=lambda b: b.taken_at, reverse=True)
    keep = {b.name for b in ordered[:1]}
    keep |= {b.name for b in [b for b in ordered if b.status == "verified"][:1]}
    for count, period in zip((policy.daily, policy.weekly, policy.monthly), _PERIODS, strict=True):
        buckets: dict[Any, list[Backup]] = {}
        for b in ordered:
            buckets.setdefault(period(b.taken_at), []).append(b)
        for members in list(buckets.values())[:count]:
            keep.add(min(members, key=lambda b: _RANK[b.status]).name)  # first of the best
    return keep


_RANK = {"verified": 0, "unverified": 0, "no_manifest": 1, "failed": 2}


def apply_retention(
    directory: Path, target: str, policy: Retention, *, key: bytes, stale_seconds: float
) -> dict[str, Any]:
    """Delete the dumps (and manifests) the policy does not keep, oldest first, at most
    policy.max_deletions per run; also leftovers of crashed runs older than stale_seconds.
    A file that cannot be deleted is reported in "errors": the new backup stays good."""
    backups = list_backups(directory, target, key)
    keep = plan_retention(backups, policy)
    doomed = [b for b in reversed(backups) if b.name not in keep]
    pattern = ours_pattern(target)
    errors: list[str] = []
    for b in doomed[: policy.max_deletions]:
        _delete([manifest_path(b.path)], pattern, directory, errors)
    deleted = _delete([b.path for b in doomed[: policy.max_deletions]], pattern, directory, errors)
    leftovers = _leftovers(directory, pattern, {b.name for b in backups}, stale_seconds)
    return {
        "kept": sorted(keep, reverse=True),
        "deleted": deleted,
        "deferred": [b.name for b in doomed[policy.max_deletions :]],
        "leftovers_removed": _delete(leftovers, pattern, directory, errors),
        "errors": errors,
    }


def apply_archive_retention(
    directory: Path, keep: int, *, max_deletions: int, stale_seconds: float
) -> dict[str, Any]:
    """The newest `keep` file archives stay; older ones go with their .sha256 and .json."""
    archives = sorted(e.name for e in os.scandir(directory) if ARCHIVE_RE.match(e.name))[::-1]
    doomed = archives[keep:][::-1][:max_deletions]
    errors: list[str] = []
    paths = [directory / (n + suffix) for n in doomed for suffix in (".sha256", ".json", "")]
    _delete(paths, ARCHIVE_OURS_RE, directory, errors)
    leftovers = _leftovers(directory, ARCHIVE_OURS_RE, set(archives), stale_seconds)
    _delete(leftovers, ARCHIVE_OURS_RE, directory, errors)
    return {"kept": archives[:keep], "deleted": doomed, "errors": errors}


def _delete(
    paths: Iterable[Path], pattern: re.Pattern[str], folder: Path, errors: list[str]
) -> list[str]:
    deleted = []
    for path in paths:
        try:
            if remove_ours(path, pattern, folder):
                deleted.append(path.name)
        except OSError as exc:
            errors.append(f"{path.name}: {exc.strerror or exc}")
    return deleted


def _leftovers(
    directory: Path, pattern: re.Pattern[str], finished: set[str], stale_seconds: float
) -> list[Path]:
    """Partials, and manifests or checksums without their file, of runs killed mid-way,
    once older than any run can last."""
    cutoff = now().timestamp() - stale_seconds
    found = []
    for entry in os.scandir(directory):
        if not pattern.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        base = entry.name.removesuffix(".json").removesuffix(".sha256")
        orphan = base != entry.name and base not in finished
        if (entry.name.endswith(".partial") or orphan) and entry.stat().st_mtime < cutoff:
            found.append(Path(entry.path))
    return found


# --- row counts ---------------------------------------------------------------------------

# Tables whose rows pg_dump writes: ordinary tables and partitions (not partitioned parents,
# views, foreign or temporary tables, nor tables that belong to an extension).
USER_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(str(s), str(n)) for s, n in conn.execute(USER_TABLES_SQL).fetchall()]


def count_rows(
    conn: psycopg.Connection, tables: Iterable[tuple[str, str]], batch: int = 100
) -> dict[tuple[str, str], int]:
    """Exact row counts (``count(*) FROM ONLY``: inheritance children count for themselves),
    a hundred tables per query, names always quoted."""
    tables = list(tables)
    counts: dict[tuple[str, str], int] = {}
    for start in range(0, len(tables), batch):
        chunk = tables[start : start + batch]
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}::int, count(*) FROM ONLY {}").format(
                sql.Literal(i), sql.Identifier(schema, name)
            )
            for i, (schema, name) in enumerate(chunk)
        )
        for i, rows in conn.execute(query).fetchall():
            counts[chunk[i]] = int(rows)
    return counts


def table_rows(counts: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    return [{"schema": s, "name": n, "rows": r} for (s, n), r in sorted(counts.items())]


# --- scratch databases --------------------------------------------------------------------


def scratch_name(at: datetime | None = None) -> str:
    """rem_verify_<8 hex of the epoch second><8 random hex>: its age is in its name, so a
    scratch database left by a killed worker is recognised and dropped later."""
    seconds = int((at or now()).timestamp())
    return f"{SCRATCH_PREFIX}{seconds:08x}{uuid.uuid4().hex[:8]}"


def scratch_created(name: str) -> datetime | None:
    match = _SCRATCH_RE.match(name)
    return datetime.fromtimestamp(int(match.group(1), 16), UTC) if match else None


def drop_database(conn: psycopg.Connection, name: str) -> None:
    """DROP DATABASE, ending its sessions (WITH (FORCE) from PostgreSQL 13)."""
    if conn.info.server_version >= 130000:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        return
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
    )
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def drop_stale_scratch(conn: psycopg.Connection, older_than_seconds: float) -> list[str]:
    """Drop rem_verify_* databases older than a verification can possibly run."""
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE %s", (SCRATCH_PREFIX + "%",)
    ).fetchall()
    dropped = []
    for (name,) in rows:
        created = scratch_created(str(name))
        if created and (now() - created).total_seconds() > older_than_seconds:
            drop_database(conn, str(name))
            dropped.append(str(name))
    return dropped


def create_scratch(conn: psycopg.Connection, name: str) -> None:
    """An empty database (template0) with the encoding and locale of the connected one."""
    row = conn.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database"
        " WHERE datname = current_database()"
    ).fetchone()
    if row is None:
        raise BackupError("the connected database is not in pg_database", "scratch")
    text = "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}"
    if conn.info.server_version >= 150000:  # ICU sources: libc is enough to count rows
        text += " LOCALE_PROVIDER libc"
    args = [sql.Identifier(name), *(sql.Literal(str(v)) for v in row)]
    conn.execute(sql.SQL(text).format(*args))
