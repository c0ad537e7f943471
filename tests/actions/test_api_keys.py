"""rotate_api_key against a real HTTP API on 127.0.0.1 (it accepts only the keys it issued),
a real provider command and real files: the runbook's order, atomic 0600 writes, the old key
untouched byte for byte on any failure before the write, and no key value in any output."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from remediation.actions.api_keys import RotateApiKeyParams, resolve_key, rotate_api_key
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.guards.keys import API_KEY_ROTATIONS
from remediation.logging import get_logger
from tests.support.key_api import KeyApi

OLD = "old-key-0123456789abcdef0123"


@pytest.fixture
def api() -> Iterator[KeyApi]:
    server = KeyApi(OLD)
    yield server
    server.stop()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "shop.key"
    path.parent.mkdir()
    path.write_text(OLD + "\n")
    path.chmod(0o640)
    return path


def configure(settings_env: Any, api: KeyApi, key_file: Path, **over: Any) -> Any:
    key = {
        "name": "shop",
        "file": str(key_file),
        "validate_url": api.url("validate"),
        "rotatable": True,
        "generate_command": api.provider_command(key_file.parent.parent),
        "revoke_url": api.url("revoke"),
        **over,
    }
    return settings_env(REMEDIATION_API_KEYS__KEYS=json.dumps([key]))


def rotate(settings: Any, name: str = "shop") -> ActionResult:
    return rotate_api_key(ActionContext(settings, get_logger()), RotateApiKeyParams(target=name))


def snapshot(path: Path) -> tuple[bytes, int, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns, stat.S_IMODE(st.st_mode)


def test_rotation_runs_generate_validate_write_revoke_in_that_order(
    settings_env: Any, api: KeyApi, key_file: Path
) -> None:
    """The provider command issues a key (old key on stdin), the API accepts it, it replaces
    the file (0600, atomically), and only then is the old key revoked; the old one is
    refused afterwards and its copy removed; the rotation is recorded."""
    s = configure(settings_env, api, key_file)
    seen_at_revoke: list[str] = []
    original = api.server.RequestHandlerClass.do_DELETE

    def spy(handler: Any) -> None:
        seen_at_revoke.append(key_file.read_text().strip())
        original(handler)

    api.server.RequestHandlerClass.do_DELETE = spy  # type: ignore[method-assign]
    result = rotate(s)
    assert result.ok and result.changed, result.summary
    new = key_file.read_text().strip()
    assert new.startswith("issued-") and key_file.read_text().endswith("\n")
    assert api.log == [("generate", OLD), ("validate", new), ("revoke", OLD)]
    assert seen_at_revoke == [new]  # the new key was on disk when the old one was revoked
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert result.detail["steps"] == ["generated", "validated", "written", "revoked"]
    assert api.valid == {new}
    assert not Path(str(key_file) + ".previous").exists()
    assert sorted(os.listdir(key_file.parent)) == ["shop.key"]  # no temporary file left
    state = redis.Redis.from_url(s.state_redis_url.get_secret_value())
    assert state.hexists(API_KEY_ROTATIONS, "shop")
    text = json.dumps(result.model_dump(mode="json"))
    assert OLD not in text and new not in text


def test_a_new_key_failing_validation_leaves_the_old_file_untouched(
    settings_env: Any, api: KeyApi, key_file: Path
) -> None:
    """The provider issues a key the API refuses: nothing is written (same bytes, inode,
    mtime and mode), nothing is revoked, and the action fails naming the step."""
    s = configure(settings_env, api, key_file)
    api.issue_unusable = True
    before = snapshot(key_file)
    result = rotate(s)
    assert (result.ok, result.changed, result.detail["failed_step"]) == (False, False, "validate")
    assert snapshot(key_file) == before
    assert api.calls() == ["generate", "validate"]
    assert OLD in api.valid
    assert sorted(os.listdir(key_file.parent)) == ["shop.key"]
    assert "old key stays in place" in result.summary


def test_a_failing_provider_command_keeps_the_old_key_and_never_echoes_it(
    settings_env: Any, api: KeyApi, key_file: Path, tmp_path: Path
) -> None:
    """A command that prints the old key to stderr and exits 3: the file is untouched and the
    error says what happened with the key masked."""
    script = tmp_path / "leaky.py"
    script.write_text(
        "import sys\nk = sys.stdin.readline().strip()\nsys.stderr.write('bad ' + k)\nsys.exit(3)\n"
    )
    s = configure(settings_env, api, key_file, generate_command=[sys.executable, str(script)])
    before = snapshot(key_file)
    result = rotate(s)
    assert (result.ok, result.detail["failed_step"]) == (False, "generate")
    assert "exited with 3" in result.summary and "bad ***" in result.summary
    assert OLD not in json.dumps(result.model_dump(mode="json"))
    assert snapshot(key_file) == before and api.log == []


def test_a_failed_revoke_after_the_write_is_reported_with_the_old_key_kept(
    settings_env: Any, api: KeyApi, key_file: Path
) -> None:
    """The revoke call answers 500: the new key is live (written, changed), the action fails
    so it escalates, and FILE.previous (0600) keeps the old key for revoking by hand."""
    s = configure(settings_env, api, key_file)
    api.revoke_status = 500
    result = rotate(s)
    assert (result.ok, result.changed, result.detail["failed_step"]) == (False, True, "revoke")
    previous = Path(str(key_file) + ".previous")
    assert previous.read_text() == OLD + "\n"
    assert stat.S_IMODE(previous.stat().st_mode) == 0o600
    assert key_file.read_text().strip().startswith("issued-")
    assert "old key is still valid" in result.summary
    assert OLD not in result.summary


def test_http_generate_reads_the_configured_json_field(
    settings_env: Any, api: KeyApi, key_file: Path
) -> None:
    """generate_url and generate_json_field: the key comes from the provider's JSON answer."""
    s = configure(
        settings_env,
        api,
        key_file,
        generate_command=None,
        generate_url=api.url("generate.json"),
        generate_json_field="data.key",
    )
    result = rotate(s)
    assert result.ok, result.summary
    assert api.calls() == ["generate", "validate", "revoke"]


def test_resolve_refuses_unknown_and_not_rotatable_keys(
    settings_env: Any, api: KeyApi, key_file: Path
) -> None:
    """A name not configured, and a key not configured rotatable, are refused before guards;
    a configured name in another case resolves to its configured spelling."""
    s = configure(settings_env, api, key_file)
    ctx = CheckContext(s, get_logger())
    assert resolve_key(ctx, RotateApiKeyParams(target="SHOP")).params.target == "shop"
    with pytest.raises(Refused, match="no API key named"):
        resolve_key(ctx, RotateApiKeyParams(target="other"))
    s = configure(settings_env, api, key_file, rotatable=False)
    with pytest.raises(Refused, match="not configured rotatable"):
        resolve_key(CheckContext(s, get_logger()), RotateApiKeyParams(target="shop"))


def test_a_key_left_unrevoked_is_never_rotated_over(
    settings_env: Any, api: KeyApi, key_file: Path
) -> None:
    """FILE.previous from an earlier failed revoke holds the only copy of a valid key: a new
    rotation stops before generating anything and leaves both files as they are."""
    s = configure(settings_env, api, key_file)
    previous = Path(str(key_file) + ".previous")
    previous.write_text("older-key-still-valid-0123\n")
    before = (snapshot(key_file), snapshot(previous))
    result = rotate(s)
    assert (result.ok, result.detail["failed_step"]) == (False, "previous")
    assert (snapshot(key_file), snapshot(previous)) == before and api.log == []
    assert "older-key-still-valid-0123" not in json.dumps(result.model_dump(mode="json"))


def test_a_delivery_that_died_after_the_write_is_finished_by_its_redelivery(
    settings_env: Any, api: KeyApi, key_file: Path
) -> None:
    """Redelivered after its worker died between write and revoke (FILE.previous written
    since the claim): no second key is generated; the old key is revoked, its copy removed."""
    s = configure(settings_env, api, key_file)
    claimed_at = time.time() - 5
    previous = Path(str(key_file) + ".previous")
    previous.write_text(OLD + "\n")
    key_file.write_text("new-key-from-the-dead-delivery\n")
    api.valid.add("new-key-from-the-dead-delivery")
    ctx = ActionContext(s, get_logger(), resumed_since=claimed_at)
    result = rotate_api_key(ctx, RotateApiKeyParams(target="shop"))
    assert result.ok and result.detail["resumed"] is True, result.summary
    assert api.log == [("revoke", OLD)]
    assert api.valid == {"new-key-from-the-dead-delivery"} and not previous.exists()


@pytest.mark.parametrize(
    ("code", "timeout", "why"),
    [
        ("import time; time.sleep(60)", "1", "timed out after 1s"),
        (
            "import sys\nwhile True: sys.stdout.write('k' * 65536)",
            "120",  # killed on its 8,193rd byte, long before this
            "printed more than 8192 bytes",
        ),
    ],
    ids=["hangs", "floods"],
)
def test_a_provider_command_is_bounded_in_time_and_output(
    settings_env: Any,
    api: KeyApi,
    key_file: Path,
    code: str,
    timeout: str,
    why: str,
    monkeypatch: Any,
) -> None:
    """A command that hangs is killed at COMMAND_TIMEOUT_SECONDS, one that prints without end
    is cut at MAX_KEY_BYTES (and killed); either way the old file is untouched."""
    monkeypatch.setenv("REMEDIATION_API_KEYS__COMMAND_TIMEOUT_SECONDS", timeout)
    s = configure(settings_env, api, key_file, generate_command=[sys.executable, "-c", code])
    before = snapshot(key_file)
    result = rotate(s)
    assert (result.ok, result.detail["failed_step"]) == (False, "generate")
    assert why in result.summary and snapshot(key_file) == before
