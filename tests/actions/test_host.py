"""cleanup_disk on a real file system: allow-listed folders only, symlinks never followed."""

from __future__ import annotations

import gzip
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from remediation.actions import host
from remediation.actions.host import CleanupDiskParams, cleanup_disk, resolve_dirs
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.registry import get_action
from remediation.runner import Runner
from tests.support.runner import Recorder

OLD = time.time() - 30 * 86400


def make(path: Path, size: int = 100, mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def settings(settings_env: Any, *dirs: Path, **env: str) -> Any:
    return settings_env(
        REMEDIATION_HOST__CLEANUP_DIRS=json.dumps([str(d) for d in dirs]),
        **{f"REMEDIATION_HOST__{k.upper()}": v for k, v in env.items()},
    )


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


def resolve(s: Any, **params: Any) -> Any:
    return resolve_dirs(CheckContext(s, get_logger()), CleanupDiskParams(**params)).params


def test_refusals_touch_nothing(settings_env: Any, tmp_path: Path) -> None:
    """No CLEANUP_DIRS, a folder a call names that is not configured, a target other than
    "self", or a configured folder that is the root folder: refused, nothing touched."""
    root, other = tmp_path / "logs", tmp_path / "other"
    kept = [make(root / "a.log"), make(other / "b.log")]
    with pytest.raises(Refused, match="REMEDIATION_HOST__CLEANUP_DIRS is empty"):
        resolve(settings_env())
    s = settings(settings_env, root)
    with pytest.raises(Refused, match="not in REMEDIATION_HOST__CLEANUP_DIRS"):
        resolve(s, dirs=[str(other)])
    with pytest.raises(Refused, match="not in REMEDIATION_HOST__CLEANUP_DIRS"):
        clean(s, dirs=[str(other)])  # the action itself holds to it when called directly
    with pytest.raises(Refused, match="always 'self'"):
        resolve(s, target="app")
    (tmp_path / "slash").symlink_to("/")
    for top in ("/", str(tmp_path / "slash")):
        with pytest.raises(Refused, match="root folder"):
            resolve(settings(settings_env, Path(top), root))
    assert all(f.exists() for f in kept)


def test_folders_are_the_configured_spellings_and_the_resource_is_the_host(
    settings_env: Any, tmp_path: Path
) -> None:
    """Named folders match after normpath and become the configured spelling, once each, in
    configured order; "SELF" is "self"; every call on this host has one resource."""
    logs, tmp = tmp_path / "logs", tmp_path / "tmp"
    s = settings_env(REMEDIATION_HOST__CLEANUP_DIRS=json.dumps([f"{logs}/", str(tmp), f"{logs}/"]))
    named = resolve(s, target="SELF", dirs=[f"{tmp}/./", f"{logs}//", str(logs)])
    assert (named.target, named.dirs) == ("self", [f"{logs}/", str(tmp)])
    assert resolve(s).dirs == [f"{logs}/", str(tmp)]
    spec = get_action("cleanup_disk")
    assert spec.resource(named) == spec.resource(resolve(s, dirs=[str(tmp)]))
    assert spec.resource(named) == "host:" + socket.gethostname()


def test_six_refusals_then_a_legitimate_call_acts(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """Six calls naming a folder that is not allowed are refused for free; the seventh,
    legitimate, is admitted and acts: the breaker stays closed, the hourly budget holds one
    use, and the six cost one 'action_refused' notice and no failure page."""
    root, other = tmp_path / "logs", tmp_path / "other"
    old, elsewhere = make(root / "old.log"), make(other / "old.log")
    s = settings(settings_env, root)
    sent = Recorder()
    runner = Runner(s, sent)
    refused = [
        runner.run_action("cleanup_disk", {"dirs": [str(other)]}, task_id=f"no-{n}")
        for n in range(6)
    ]
    assert [o.outcome for o in refused] == ["refused"] * 6
    assert all("not in REMEDIATION_HOST__CLEANUP_DIRS" in o.reason for o in refused)
    done = runner.run_action("cleanup_disk", {"dirs": [str(root)]}, task_id="yes")
    assert done.outcome == "succeeded" and done.result is not None
    assert done.result["detail"]["touched"] == 1
    assert not old.exists() and elsewhere.exists()
    breaker = keys.breaker("cleanup_disk:self")
    assert r.hget(breaker, "state") in (None, b"closed")
    assert r.zcard(keys.breaker_failures("cleanup_disk:self")) == 0
    assert r.zcard(keys.budget("cleanup_disk")) == 1
    kinds = [k["kind"] for task, k, _ in sent.sent if task == "remediation.act.notify"]
    assert kinds == ["action_refused"]
    rows = runner.store.query(
        "SELECT decision, guard FROM guard_decisions WHERE task_id LIKE 'no-%%'"
    )
    assert rows == [{"decision": "refused", "guard": "resolve"}] * 6


def test_gzip_never_carries_setuid_setgid_or_sticky_bits(settings_env: Any, tmp_path: Path) -> None:
    """A setuid, setgid, sticky old log is compressed into a .gz with only its permission
    bits (0755), never the special ones."""
    root = tmp_path / "logs"
    log = make(root / "suid.log")
    os.chmod(log, 0o7755)  # noqa: S103 - the special bits are what is tested
    assert stat.S_IMODE(log.stat().st_mode) == 0o7755
    result = clean(settings(settings_env, root, cleanup_mode="gzip"))
    assert result.detail["touched"] == 1 and not log.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((root / "suid.log.gz").stat().st_mode) == 0o755 & ~umask
