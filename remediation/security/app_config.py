"""The application's YAML configuration: read and turn on its log-scrubbing flag (runbook 004
"Enable FA scrubbing in config: configs/security.yaml, ibkr_fa_scrubbing: true").

Round-trip with ruamel.yaml, so the operator's comments and key order stay; written
atomically (a temporary file in the same folder, fsync, rename, fsync of the folder) after
the previous file is kept as ``<name>.<UTC stamp>.bak`` (the newest N are kept).
"""

from __future__ import annotations

import io
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

MAX_CONFIG_BYTES = 1 << 20


class ConfigFileError(Exception):
    """The configuration file cannot be read or changed safely."""


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    return yaml


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigFileError(f"{path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigFileError(f"{path} is not a regular file")
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{path} is over {MAX_CONFIG_BYTES} bytes")
    return data, st


def _load(data: bytes, path: Path) -> Any:
    try:
        doc = _yaml().load(data) if data.strip() else CommentedMap()
    except Exception as exc:  # ruamel raises many types; the file is the operator's
        raise ConfigFileError(f"{path} is not valid YAML: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise ConfigFileError(f"{path} does not hold a mapping at the top")
    return doc


def flag(path: str, key: str) -> bool:
    """Whether the dotted key is true in the file (a missing key is false)."""
    node: Any = _load(_read(Path(path))[0], Path(path))
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return node is True


def enable(path: str, key: str, backups: int) -> str | None:
    """Set the dotted key to true; None when it already was, else the backup's path."""
    target = Path(path)
    data, st = _read(target)
    doc = _load(data, target)
    node = doc
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = CommentedMap()
        if not isinstance(child, dict):
            raise ConfigFileError(f"{path}: {part} is not a mapping; not changing it")
        node = child
    if node.get(parts[-1]) is True:
        return None
    node[parts[-1]] = True
    out = io.BytesIO()
    _yaml().dump(doc, out)
    backup = _backup(target, data, st, backups)
    _atomic_write(target, out.getvalue(), st)
    return str(backup)


def _backup(target: Path, data: bytes, st: os.stat_result, keep: int) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    backup = target.with_name(f"{target.name}.{stamp}.bak")
    _write_new(backup, data, stat.S_IMODE(st.st_mode) & 0o777)
    old = sorted(target.parent.glob(f"{target.name}.*.bak"))
    for stale in old[: max(len(old) - keep, 0)]:
        stale.unlink()
    return backup


def _atomic_write(target: Path, data: bytes, st: os.stat_result) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _write_new(tmp, data, stat.S_IMODE(st.st_mode) & 0o777)
    try:
        os.chown(tmp, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # not root: the file keeps our owner, as any editor would leave it
    os.replace(tmp, target)
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
