"""The folder probe as the worker's (non-root) user: a read-only, a world-writable, a foreign
and a missing folder are each a ✗ with its fix; a private writable folder is ✓."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from remediation.doctor import folders
from tests.support.servers import in_child_as

USER = "nobody"


def as_user(paths: list[Path]) -> list[dict[str, Any]]:
    """probe_folder on each path, as USER when we are root (root ignores modes)."""
    specs = [
        folders.Folder("backup_dir", p, "BACKUP__DIR", ("backup_database",), True) for p in paths
    ]
    return cast(
        list[dict[str, Any]],
        in_child_as(USER, lambda: [[r.as_dict() for r in folders.probe_folder(f)] for f in specs]),
    )


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder USER may enter, owned by USER (when root), removed after."""
    path = Path(tempfile.mkdtemp(prefix="rem-doctor-", dir="/tmp"))
    path.chmod(0o755)
    if os.geteuid() == 0:
        user = pwd.getpwnam(USER)
        os.chown(path, user.pw_uid, user.pw_gid)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o700)
    shutil.rmtree(path)


def _made(base: Path, name: str, mode: int, owner: str | None = USER) -> Path:
    path = base / name
    path.mkdir()
    if os.geteuid() == 0 and owner:
        user = pwd.getpwnam(owner)
        os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(mode)
    return path


def _failed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "fail"]


def test_private_writable_folder_is_ok(base: Path) -> None:
    """A 0700 folder of the worker's own is ✓ on every row, and the probe leaves no file."""
    good = _made(base, "good", 0o700)
    (rows,) = as_user([good])
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert list(good.iterdir()) == []


def test_read_only_folder_fails_with_fix(base: Path) -> None:
    """A 0500 backup folder: no file can be created; the fix makes it writable."""
    ro = _made(base, "ro", 0o500)
    (rows,) = as_user([ro])
    (bad,) = _failed(rows)
    assert "writable" in bad["what"] and f"chmod u+rwx {ro}" in bad["fix"]
    assert bad["needed_by"] == ["backup_database"]


def test_world_writable_folder_fails_with_chmod(base: Path) -> None:
    """A 0777 folder: others could swap the dumps; the fix is chmod 0700."""
    ww = _made(base, "ww", 0o777)
    (rows,) = as_user([ww])
    (bad,) = _failed(rows)
    assert bad["fix"] == f"chmod 0700 {ww}" and "0777" in bad["detail"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder another user owns")
def test_foreign_folder_fails_with_chown(base: Path) -> None:
    """A folder owned by root while the worker is USER: the fix is chown."""
    foreign = _made(base, "foreign", 0o755, owner=None)
    (rows,) = as_user([foreign])
    assert any(r["fix"] == f"chown {USER} {foreign}" for r in _failed(rows))


def test_missing_folder_that_cannot_be_made_fails_with_mkdir(base: Path) -> None:
    """A missing folder under one the worker may not write: the fix is mkdir + chown."""
    ro = _made(base, "ro", 0o500)
    missing = ro / "backups"
    (rows,) = as_user([missing])
    (bad,) = _failed(rows)
    assert bad["fix"] == f"mkdir -p -m 0700 {missing} && chown {USER} {missing}"


def test_missing_folder_the_worker_can_make_is_ok(base: Path) -> None:
    """A missing folder under a writable one is ✓: the worker creates it (0700) when needed."""
    parent = _made(base, "parent", 0o700)
    (rows,) = as_user([parent / "backups"])
    assert [r["status"] for r in rows] == ["ok"] and "created" in rows[0]["detail"]


def test_free_space_against_the_database_size(
    settings_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Room for the audit database's dump is ✓; a disk with 1 KiB free is ✗ saying how much
    to free; an unreadable database size is "cannot tell"."""
    s = settings_env(REMEDIATION_BACKUP__DIR=str(tmp_path))
    (folder,) = [f for f in folders.folders(s) if f.name == "backup_dir"]
    assert folders.free_space(s, folder).status == "ok"
    real = shutil.disk_usage

    def tiny(path: Any) -> Any:
        return real(path)._replace(free=1024)

    monkeypatch.setattr(folders.shutil, "disk_usage", tiny)
    row = folders.free_space(s, folder)
    assert row.status == "fail" and row.fix.startswith("free ")
    assert "REMEDIATION_BACKUP__DIR" in row.fix
    s = settings_env(
        REMEDIATION_BACKUP__DIR=str(tmp_path),
        REMEDIATION_POSTGRES_TARGETS__APP="postgresql://app:pw@127.0.0.1:1/app",
        REMEDIATION_POSTGRES__CONNECT_TIMEOUT_SECONDS="2",
    )
    row = folders.free_space(s, folder)
    assert row.status == "unknown" and "app" in row.detail and ":pw@" not in row.detail
