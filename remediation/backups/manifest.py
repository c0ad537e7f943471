"""Checksums, JSON files and authenticated manifests of backups."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from remediation import signing
from remediation.backups.layout import CHUNK, BackupError

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
