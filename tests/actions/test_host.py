"""cleanup_disk on a real file system: allow-listed folders only, symlinks never followed."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path
from typing import Any

from remediation.actions import host
from remediation.actions.host import CleanupDiskParams, cleanup_disk
from remediation.context import ActionContext
from remediation.findings import ActionResult
from remediation.logging import get_logger

OLD = time.time() - 30 * 86400


def make(path: Path, size: int = 100, mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def settings(settings_env: Any, *dirs: Path, **env: str) -> Any:
    return settings_env(REMEDIATION_HOST__CLEANUP_DIRS=json.dumps([str(d) for d in dirs]),
                        **{f"REMEDIATION_HOST__{k.upper()}": v for k, v in env.items()})  # fmt: skip


def clean(s: Any, **params: Any) -> ActionResult:
    return cleanup_disk(ActionContext(s, get_logger()), CleanupDiskParams(**params))


def test_old_matching_files_go_new_and_other_files_stay(settings_env: Any, tmp_path: Path) -> None:
    """Old *.log and *.tmp files are deleted, recent logs and non-matching files are kept."""
    root = tmp_path / "logs"
    old_log, old_tmp = make(root / "app.log"), make(root / "sub" / "x.tmp")
    new_log, other = make(root / "today.log", mtime=time.time()), make(root / "data.csv")
    result = clean(settings(settings_env, root))
    assert (result.ok, result.detail["touched"], result.detail["freed_bytes"]) == (True, 2, 200)
    assert sorted(result.detail["files"][str(root)]) == ["app.log", "sub/x.tmp"]
    assert result.detail["skipped"]["too_new"] == 1
    assert not old_log.exists() and not old_tmp.exists()
    assert new_log.exists() and other.exists()


def test_symlinks_and_hard_links_never_reach_outside(settings_env: Any, tmp_path: Path) -> None:
    """Links inside the root to an old file and a folder outside leave the outside files intact."""
    root, outside = tmp_path / "logs", tmp_path / "outside"
    target_file, target_dir_file = make(outside / "secret.log"), make(outside / "dir" / "old.log")
    root.mkdir()
    (root / "link.log").symlink_to(target_file)
    (root / "linkdir").symlink_to(outside / "dir")
    os.link(make(outside / "shared.log"), root / "hard.log")
    result = clean(settings(settings_env, root))
    assert (result.detail["touched"], result.detail["skipped"]["symlinks"]) == (0, 2)
    assert result.detail["skipped"]["hardlinked"] == 1
    assert target_file.exists() and target_dir_file.exists() and (outside / "shared.log").exists()
    assert (root / "link.log").is_symlink() and (root / "hard.log").exists()


def test_folder_swapped_for_symlink_after_the_walk(settings_env: Any, tmp_path: Path) -> None:
    """A folder replaced by a symlink between walk and delete is not followed out of the root."""
    root, outside = tmp_path / "logs", tmp_path / "outside"
    make(root / "sub" / "old.log")
    victim = make(outside / "old.log")
    s = settings(settings_env, root)
    run = host._Run(s.host, cutoff=time.time() - 86400)
    candidates = host._walk(run, str(root))
    (root / "sub" / "old.log").unlink()
    (root / "sub").rmdir()
    (root / "sub").symlink_to(outside)
    host._apply(run, candidates)
    assert victim.exists() and run.touched == 0
    assert run.errors and "sub/old.log" in run.errors[0]


def test_gzip_mode_keeps_content_and_mtime(settings_env: Any, tmp_path: Path) -> None:
    """gzip mode writes name.gz with the same content and mtime, then removes the original."""
    root = tmp_path / "logs"
    log = make(root / "app.log", size=100_000)
    done = make(root / "older.log.gz")
    result = clean(settings(settings_env, root, cleanup_mode="gzip"))
    assert (result.detail["touched"], result.detail["skipped"]["compressed"]) == (1, 1)
    packed = root / "app.log.gz"
    assert not log.exists() and gzip.decompress(packed.read_bytes()) == b"x" * 100_000
    assert packed.stat().st_mtime == OLD
    assert result.detail["freed_bytes"] == 100_000 - packed.stat().st_size
    assert done.read_bytes() == b"x" * 100  # an existing .gz is left as it is


def test_byte_cap_stops_oldest_first(settings_env: Any, tmp_path: Path) -> None:
    """Files go oldest first until the next one would pass CLEANUP_MAX_BYTES_PER_RUN."""
    root = tmp_path / "logs"
    files = [make(root / f"{i}.log", size=1000, mtime=OLD - i * 60) for i in range(5)]
    result = clean(settings(settings_env, root, cleanup_max_bytes_per_run="2500"))
    assert (result.detail["freed_bytes"], result.detail["skipped"]["over_cap"]) == (2000, 3)
    assert [f.exists() for f in files] == [True, True, True, False, False]


def test_refusals_touch_nothing(settings_env: Any, tmp_path: Path) -> None:
    """No CLEANUP_DIRS, or a folder a call names that is not configured, is refused."""
    root, other = tmp_path / "logs", tmp_path / "other"
    kept = [make(root / "a.log"), make(other / "b.log")]
    result = clean(settings_env())
    assert not result.ok and "REMEDIATION_HOST__CLEANUP_DIRS" in result.summary
    result = clean(settings(settings_env, root), dirs=[str(other)])
    assert not result.ok and "not in REMEDIATION_HOST__CLEANUP_DIRS" in result.summary
    assert all(f.exists() for f in kept)
