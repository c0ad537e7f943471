"""log_secrets on real files and the real state Redis: incremental by inode and offset,
rotation, truncation, the byte budget, and leaks re-read until they are gone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from remediation.checks.log_secrets import LogSecretsParams, log_secrets
from remediation.context import CheckContext
from remediation.errors import ConfigError
from remediation.findings import Finding
from remediation.logging import get_logger
from remediation.security import log_quarantine, log_scan
from remediation.security.log_patterns import pattern_set
from remediation.security.log_quarantine import quarantine_and_mask

FA = "F7654321"
AWS = "AKIAQ3EGRLZ5XK7TPW2M"
NORMAL = "2026-11-28T01:00:00Z INFO order filled symbol=AAPL qty=10 status=200 took=12ms\n"


def settings(settings_env: Any, tmp_path: Path, *files: str, **env: str) -> Any:
    return settings_env(
        REMEDIATION_SECRETS__FILES=json.dumps(list(files) or [str(tmp_path / "logs" / "*.log")]),
        REMEDIATION_SECRETS__QUARANTINE_DIR=str(tmp_path / "quarantine"),
        **{f"REMEDIATION_SECRETS__{k.upper()}": v for k, v in env.items()},
    )


def run(s: Any) -> list[Finding]:
    return log_secrets(CheckContext(s, get_logger()), LogSecretsParams())


def leaks(findings: list[Finding]) -> dict[str, Finding]:
    return {f.subject: f for f in findings if f.kind == "log_secret_leaked"}


def write(path: Path, *lines: str, mode: str = "a") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode, encoding="utf-8") as fh:
        fh.writelines(lines)
    return path


def test_secret_is_named_by_file_line_and_pattern_never_by_value(
    settings_env: Any, tmp_path: Path
) -> None:
    """Two planted secrets: the finding names file, lines 2 and 4 and the patterns; the
    finding as stored (summary, evidence, observed) holds neither secret."""
    log = write(
        tmp_path / "logs" / "app.log",
        NORMAL,
        f"INFO ibkr allocation fa={FA} done\n",
        NORMAL,
        f"DEBUG aws key {AWS} loaded\n",
        NORMAL,
    )
    found = leaks(run(settings(settings_env, tmp_path)))
    leak = found[str(log)]
    assert leak.evidence["lines"] == [2, 4]
    assert {name for name, _ in leak.evidence["patterns"]} == {
        "ibkr_fa_field",
        "ibkr_account",
        "aws_access_key",
    }
    assert (leak.severity.value, leak.observed) == ("critical", 2)
    stored = json.dumps(leak.model_dump(mode="json"))
    assert FA not in stored and AWS not in stored


def test_second_run_reads_only_new_lines_and_leaks_stay_until_gone(
    settings_env: Any, tmp_path: Path
) -> None:
    """The second run starts where the first stopped (no line read twice) and still reports
    the leak, which is still in the file; masking it ends the finding (not vacuous)."""
    s = settings(settings_env, tmp_path)
    log = write(tmp_path / "logs" / "app.log", NORMAL, f"x fa={FA} db=redis://u:pw-{FA}@h\n")
    first = leaks(run(s))[str(log)]
    write(log, NORMAL)
    second = leaks(run(s))[str(log)]
    assert second.evidence["scanned_from"] == first.evidence["scanned_to"]
    assert (second.evidence["new_lines"], second.evidence["lines"]) == (0, [2])
    quarantine_and_mask(str(log), pattern_set({}), str(tmp_path / "q"), 1 << 20, 4096, "test")
    assert leaks(run(s)) == {}


def test_rotation_starts_the_new_file_at_zero_and_never_rereads_the_old_one(
    settings_env: Any, tmp_path: Path
) -> None:
    """app.log renamed app.log.1 (still matched by the glob) and a new app.log: the new file
    is read from 0 and its secret reported; the rotated file is not read again."""
    logs = tmp_path / "logs"
    s = settings(settings_env, tmp_path, str(logs / "app.log*"))
    log = write(logs / "app.log", NORMAL, f"fa={FA}\n", NORMAL)
    assert list(leaks(run(s))) == [str(log)]
    quarantine_and_mask(str(log), pattern_set({}), str(tmp_path / "q"), 1 << 20, 4096, "test")
    assert leaks(run(s)) == {}
    os.rename(log, logs / "app.log.1")
    fresh = write(logs / "app.log", f"aws {AWS}\n", NORMAL)
    found = run(s)
    assert list(leaks(found)) == [str(fresh)]
    assert leaks(found)[str(fresh)].evidence["scanned_from"] == 0
    rotated = os.stat(logs / "app.log.1")
    saved = s_state(s).hgetall(log_scan.state_key(rotated.st_dev, rotated.st_ino))
    assert int(saved[b"offset"]) == rotated.st_size  # where it was: nothing re-read


def s_state(s: Any) -> Any:
    return CheckContext(s, get_logger()).state


def test_rotation_with_only_the_live_name_configured(settings_env: Any, tmp_path: Path) -> None:
    """Only app.log configured: after rotation the old secret is not reported again (the
    rotated file is not configured) and the new file is scanned from its first line."""
    logs = tmp_path / "logs"
    s = settings(settings_env, tmp_path, str(logs / "app.log"))
    write(logs / "app.log", f"fa={FA}\n")
    assert len(leaks(run(s))) == 1
    os.rename(logs / "app.log", logs / "app.log.1")
    write(logs / "app.log", NORMAL, NORMAL)
    assert leaks(run(s)) == {}


def test_truncation_starts_again_at_zero(settings_env: Any, tmp_path: Path) -> None:
    """A file cut below the offset (copytruncate) is read again from its first byte."""
    s = settings(settings_env, tmp_path)
    log = write(tmp_path / "logs" / "app.log", *[NORMAL] * 20)
    assert leaks(run(s)) == {}
    write(log, f"fa={FA}\n", mode="w")
    leak = leaks(run(s))[str(log)]
    assert (leak.evidence["scanned_from"], leak.evidence["lines"]) == (0, [1])


def test_incomplete_last_line_waits_for_its_end(settings_env: Any, tmp_path: Path) -> None:
    """A line without its newline yet is not read; once complete it is."""
    s = settings(settings_env, tmp_path)
    log = write(tmp_path / "logs" / "app.log", NORMAL, f"half fa={FA}")
    assert leaks(run(s)) == {}
    write(log, " rest\n")
    assert leaks(run(s))[str(log)].evidence["lines"] == [2]


def test_byte_budget_cuts_the_scan_short_and_says_so(settings_env: Any, tmp_path: Path) -> None:
    """A budget smaller than the file: log_scan_incomplete names the bytes behind, and the
    following runs go on from there until the secret at the end is found."""
    s = settings(settings_env, tmp_path, max_bytes_per_run="8192", max_line_bytes="1024")
    log = write(tmp_path / "logs" / "app.log", *[NORMAL] * 500, f"fa={FA}\n")
    first = run(s)
    (behind,) = [f for f in first if f.kind == "log_scan_incomplete"]
    assert 0 < behind.evidence["bytes_behind"][str(log)] < log.stat().st_size
    assert leaks(first) == {}
    for _ in range(10):
        found = run(s)
        if leaks(found):
            break
    assert leaks(found)[str(log)].evidence["lines"] == [501]
    assert not [f for f in run(s) if f.kind == "log_scan_incomplete"]


def test_symlinks_are_never_followed(settings_env: Any, tmp_path: Path) -> None:
    """A symlink matched by the glob is skipped, and so is a file reached through a
    symlinked folder."""
    outside = write(tmp_path / "outside" / "secret.log", f"fa={FA}\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "link.log").symlink_to(outside)
    (tmp_path / "linked").symlink_to(tmp_path / "outside")
    s = settings(
        settings_env, tmp_path, str(tmp_path / "logs" / "*.log"), str(tmp_path / "linked" / "*")
    )
    found = run(s)
    assert leaks(found) == {}
    (skipped,) = [f for f in found if f.kind == "log_scan_skipped"]
    assert sorted(skipped.evidence["paths"]) == [
        str(tmp_path / "linked" / "secret.log"),
        str(tmp_path / "logs" / "link.log"),
    ]


def test_operator_patterns_are_used_and_must_be_linear(settings_env: Any, tmp_path: Path) -> None:
    """An operator pattern finds its shape (and masks its secret group); a pattern RE2 cannot
    run in linear time (a backreference) stops start-up naming the variable."""
    s = settings(
        settings_env, tmp_path, patterns=json.dumps({"order_token": "otk=(?P<secret>[A-Z0-9]{12})"})
    )
    log = write(tmp_path / "logs" / "app.log", NORMAL, "ok otk=ABCDEF123456 sent\n")
    assert leaks(run(s))[str(log)].evidence["patterns"] == [("order_token", 1)]
    with pytest.raises(ConfigError, match="REMEDIATION_SECRETS__PATTERNS"):
        settings(settings_env, tmp_path, patterns=json.dumps({"bad": r"(a+)\1"}))
    with pytest.raises(ConfigError, match="REMEDIATION_SECRETS"):
        settings(settings_env, tmp_path, disabled_patterns='["no_such"]')


def test_scrubbing_flag_required_after_a_leak(settings_env: Any, tmp_path: Path) -> None:
    """With a leak seen and the flag false: log_scrubbing_off; with the flag true: none."""
    config = tmp_path / "security.yaml"
    config.write_text("# app security\nibkr_fa_scrubbing: false\n")
    s = settings(settings_env, tmp_path, app_config=str(config))
    write(tmp_path / "logs" / "app.log", f"fa={FA}\n")
    kinds = [f.kind for f in run(s)]
    assert "log_scrubbing_off" in kinds
    config.write_text("ibkr_fa_scrubbing: true\n")
    assert "log_scrubbing_off" not in [f.kind for f in run(s)]


def test_many_leaking_lines_are_counted_listed_briefly_and_all_masked(
    settings_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """120 leaking lines: all counted, 20 listed, 50 remembered; masking the file (in
    pieces smaller than it) clears them all, and the next run reports nothing."""
    s = settings(settings_env, tmp_path)
    log = write(
        tmp_path / "logs" / "app.log", *[f"{NORMAL.strip()} fa=F{i:07d}\n" for i in range(120)]
    )
    leak = leaks(run(s))[str(log)]
    assert (leak.observed, len(leak.evidence["lines"])) == (120, 20)
    key = log_scan.state_key(log.stat().st_dev, log.stat().st_ino)
    assert len(json.loads(s_state(s).hget(key, "leaks"))) == log_scan.MAX_KEPT
    monkeypatch.setattr(log_quarantine, "CHUNK", 1024)  # 11 KB file, masked 1 KB at a time
    monkeypatch.setattr(log_scan, "CHUNK", 1024)
    done = quarantine_and_mask(str(log), pattern_set({}), str(tmp_path / "q"), 1 << 20, 256, "t")
    assert done.masked_lines == 120 and "F0000119" not in log.read_text()
    assert leaks(run(s)) == {}


def test_cli_shows_offsets_leaking_lines_and_quarantine_never_a_line(
    settings_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`remediation secrets --json`: the file with its offset and leaking line numbers, the
    quarantined original with its source; no secret in the output."""
    from remediation.cli import main

    s = settings(settings_env, tmp_path)
    log = write(tmp_path / "logs" / "app.log", NORMAL, f"fa={FA}\n")
    run(s)
    quarantine_and_mask(str(log), pattern_set({}), str(tmp_path / "quarantine"), 1 << 20, 4096, "t")
    assert main(["secrets", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    (row,) = data["files"]
    assert (row["file"], row["offset"], row["behind"], row["lines"]) == (
        str(log),
        log.stat().st_size,
        0,
        [2],
    )
    assert [q["from"] for q in data["quarantined"]] == [str(log)]
    assert FA not in out
    assert main(["secrets"]) == 0 and FA not in capsys.readouterr().out


def test_budget_left_by_a_caught_up_file_goes_to_one_behind(
    settings_env: Any, tmp_path: Path
) -> None:
    """Two files, 16 KiB per run: the small one takes 1 KiB of its 8 KiB share, and the big
    one reads on into what it left (more than its share), finding the secret past it."""
    s = settings(settings_env, tmp_path, max_bytes_per_run="16384", max_line_bytes="1024")
    write(tmp_path / "logs" / "a.log", *[NORMAL] * 10)
    big = write(tmp_path / "logs" / "b.log", *[NORMAL] * 130, f"fa={FA}\n", *[NORMAL] * 100)
    found = run(s)
    leak = leaks(found)[str(big)]
    assert leak.evidence["lines"] == [131]
    assert 8192 < leak.evidence["scanned_to"] <= 16384 and leak.evidence["scanned_from"] == 0
    assert leak.evidence["new_lines"] == 1


def test_secrets_in_an_overlong_line_are_each_kept_in_a_bounded_window(
    settings_env: Any, tmp_path: Path
) -> None:
    """A 40 KB line (MAX_LINE_BYTES 4 KB) with secrets near its start and end: both are
    found on line 2, each remembered as a window of at most 4 KB, and masking clears both."""
    s = settings(settings_env, tmp_path, max_line_bytes="4096")
    long_line = f"start fa={FA} " + "x" * 40_000 + f" end key {AWS}\n"
    log = write(tmp_path / "logs" / "app.log", NORMAL, long_line, NORMAL)
    leak = leaks(run(s))[str(log)]
    assert leak.evidence["lines"] == [2, 2]
    key = log_scan.state_key(log.stat().st_dev, log.stat().st_ino)
    windows = json.loads(s_state(s).hget(key, "leaks"))
    assert all(end - start <= 4096 for _, start, end, _ in windows)
    quarantine_and_mask(str(log), pattern_set({}), str(tmp_path / "q"), 1 << 20, 4096, "t")
    assert FA not in log.read_text() and AWS not in log.read_text()
    assert leaks(run(s)) == {}
