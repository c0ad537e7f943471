"""API keys (runbooks 003 "Rotate API keys", 004 "API key validation failure"): reading a key
from its variable or secret file, its age, the validation request, and the rotation steps
(generate, write, revoke) the check and the action share.

A key's value never leaves this module in any text: every message built from a failure
(an exception, a command's stderr, an HTTP answer) goes through ``scrub`` with the values
involved, requests never follow redirects (a custom header would follow them to another
host) and never read ~/.netrc or proxy variables (trust_env off), commands get the old
key on stdin (never argv, never their environment) and an environment built from scratch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Literal

import redis
import requests
import urllib3

from remediation.guards.keys import API_KEY_ROTATIONS
from remediation.redact import MASK, redact_text
from remediation.settings.api_keys import ApiKey

CHILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PREVIOUS_SUFFIX = ".previous"
"""The replaced key is kept beside the file (0600) until the provider revoked it."""
MAX_MESSAGE = 500
"""Characters of a command's stderr or an error kept in a finding or result."""
INVALID_STATUSES = (401, 403)
"""Answers that mean the key itself is refused; anything else unexpected is 'cannot tell'."""


class RotationError(Exception):
    """A rotation step failed; the message is already scrubbed of every key value."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


def scrub(text: str, *secrets: str | None) -> str:
    """text with every given secret replaced by ***, then redacted and bounded."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = redact_text(text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def source_of(key: ApiKey) -> str:
    return f"env {key.env}" if key.env else f"file {key.file}"


# --- reading -------------------------------------------------------------------------------


def read_key(key: ApiKey, max_bytes: int) -> tuple[str | None, str]:
    """(value, "") or (None, why it is missing) from the variable or the secret file."""
    if key.env is not None:
        value = os.environ.get(key.env, "").strip()
        return (value, "") if value else (None, f"variable {key.env} is not set or empty")
    assert key.file is not None
    try:
        fd = os.open(key.file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, f"file {key.file} does not exist"
    except OSError as exc:
        return None, f"file {key.file} cannot be opened: {exc.strerror}"
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None, f"{key.file} is not a regular file"
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        return None, f"file {key.file} holds more than {max_bytes} bytes: not a key"
    value = raw.decode("utf-8", "replace").strip()
    return (value, "") if value else (None, f"file {key.file} is empty")


def recorded_rotations(state: redis.Redis) -> dict[str, float]:
    """name -> epoch of the last rotation recorded (by rotate_api_key or by hand)."""
    out: dict[str, float] = {}
    for name, when in state.hgetall(API_KEY_ROTATIONS).items():
        with contextlib.suppress(ValueError):
            out[name.decode() if isinstance(name, bytes) else str(name)] = float(when)
    return out


def record_rotation(state: redis.Redis, name: str, when: float) -> None:
    state.hset(API_KEY_ROTATIONS, name, repr(when))


def changed_at(key: ApiKey, recorded: dict[str, float]) -> tuple[float | None, str]:
    """(epoch the key last changed, where that comes from): the newer of the secret file's
    mtime and the recorded rotation; (None, "unknown") for a variable never recorded."""
    candidates: list[tuple[float, str]] = []
    if key.file is not None:
        with contextlib.suppress(OSError):
            candidates.append((os.stat(key.file).st_mtime, "file mtime"))
    when = recorded.get(key.name)
    if when is not None:
        candidates.append((when, "recorded rotation"))
    if not candidates:
        return None, "unknown"
    return max(candidates)


# --- the validation request ------------------------------------------------------------------


@dataclass(frozen=True)
class Validation:
    verdict: Literal["valid", "invalid", "unverifiable"]
    status: int | None = None
    error: str = ""


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no ~/.netrc Authorization, no proxy variables
    return session


def _header(key: ApiKey, value: str) -> dict[str, str]:
    return {key.header: key.header_format.replace("{key}", value)}


def validate(key: ApiKey, value: str, timeout: float) -> Validation:
    """Send the validation request with the key: an expected status is valid, 401/403 invalid,
    anything else (an error, a timeout, another status) cannot tell."""
    assert key.validate_url is not None
    try:
        with _session() as session:
            resp = session.request(
                key.validate_method,
                key.validate_url,
                headers=_header(key, value),
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
            resp.close()
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        return Validation("unverifiable", None, scrub(f"{type(exc).__name__}: {exc}", value))
    if resp.status_code in key.expected_status:
        return Validation("valid", resp.status_code)
    if resp.status_code in INVALID_STATUSES:
        return Validation("invalid", resp.status_code)
    expected = ", ".join(map(str, key.expected_status))
    return Validation(
        "unverifiable", resp.status_code, f"answered {resp.status_code}, expected {expected}"
    )


# --- rotation steps ----------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """A command's whole environment, from scratch: none of the worker's variables (its
    settings, other keys) reach it."""
    env = {"PATH": CHILD_PATH, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    for name in ("HOME", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def run_command(step: str, argv: list[str], secret: str, timeout: float, max_bytes: int) -> str:
    """Run argv (no shell) with ``secret`` and a newline on stdin, in its own process group
    killed at the timeout; its stdout (at most max_bytes) as text. RotationError on a timeout,
    a non-zero exit or a start failure, with stderr scrubbed of the secret. Output goes
    through pipes into memory, capped (never a temporary file: the new key is on stdout)."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise RotationError(step, f"{argv[0]} cannot start: {exc.strerror}") from None
    out, err = bytearray(), bytearray()
    threads = [
        threading.Thread(target=_feed, args=(proc, secret), daemon=True),
        threading.Thread(
            target=_capture, args=(proc.stdout, out, max_bytes + 1, proc), daemon=True
        ),
        threading.Thread(target=_capture, args=(proc.stderr, err, 4096), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise RotationError(step, f"{argv[0]} timed out after {timeout:.0f}s") from None
    finally:
        _kill(proc)
        for t in threads:
            t.join(5)
    text = bytes(out).decode("utf-8", "replace")
    if len(out) > max_bytes:  # killed as soon as it passed the limit
        raise RotationError(step, f"{argv[0]} printed more than {max_bytes} bytes")
    if code != 0:
        stderr = bytes(err).decode("utf-8", "replace").strip()
        why = scrub(stderr, secret, text.strip()) or "(no message)"
        raise RotationError(step, f"{argv[0]} exited with {code}: {why}")
    return text


def _feed(proc: subprocess.Popen[bytes], secret: str) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(OSError):  # a command that does not read its stdin
        proc.stdin.write(secret.encode() + b"\n")
    with contextlib.suppress(OSError):
        proc.stdin.close()


def _capture(
    stream: IO[bytes] | None,
    into: bytearray,
    cap: int,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Read stream to its end, keeping at most cap bytes (the rest is drained, not kept);
    with proc, kill its process group as soon as cap bytes arrived."""
    assert stream is not None
    with stream:
        while chunk := os.read(stream.fileno(), 65536):
            if len(into) < cap:
                into += chunk[: cap - len(into)]
            if proc is not None and len(into) >= cap:
                _kill(proc, wait=False)


def _kill(proc: subprocess.Popen[bytes], wait: bool = True) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if wait:
            proc.wait()


def _checked_key(step: str, raw: str, old: str, max_bytes: int) -> str:
    new = raw.strip()
    if not new:
        raise RotationError(step, "no new key was produced (empty answer)")
    if len(new.encode()) > max_bytes or any(ch in new for ch in "\r\n\x00"):
        raise RotationError(step, "the answer is not one key (several lines, NUL, or too long)")
    if new == old:
        raise RotationError(step, "the new key is the old one")
    return new


def _dig(doc: Any, path: str) -> Any:
    for part in path.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def generate(key: ApiKey, old: str, timeout: float, max_bytes: int) -> str:
    """Step 1 "Generate new keys": the configured command's stdout, or the generate_url's
    answer (the whole body or its generate_json_field), the old key authenticating."""
    if key.generate_command is not None:
        raw = run_command("generate", key.generate_command, old, timeout, max_bytes)
        return _checked_key("generate", raw, old, max_bytes)
    assert key.generate_url is not None
    body = _call("generate", "POST", key.generate_url, key, old, timeout, max_bytes)
    if key.generate_json_field:
        try:
            found = _dig(json.loads(body), key.generate_json_field)
        except ValueError:
            raise RotationError("generate", "the answer is not JSON") from None
        if not isinstance(found, str):
            raise RotationError("generate", f"the answer has no text at {key.generate_json_field}")
        body = found
    return _checked_key("generate", body, old, max_bytes)


def revoke(key: ApiKey, old: str, timeout: float) -> None:
    """Step 4 "Revoke old keys": the configured command (old key on stdin) or HTTP call (old
    key in the configured header); RotationError unless it succeeded."""
    if key.revoke_command is not None:
        run_command("revoke", key.revoke_command, old, timeout, 4096)
        return
    assert key.revoke_url is not None
    _call("revoke", key.revoke_method, key.revoke_url, key, old, timeout, 4096)


def _call(
    step: str, method: str, url: str, key: ApiKey, old: str, timeout: float, max_bytes: int
) -> str:
    """One provider call with the old key in the header; its body (bounded) on a 2xx."""
    try:
        with _session() as session:
            resp = session.request(
                method,
                url,
                headers=_header(key, old),
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
            with resp:
                body = resp.raw.read(max_bytes + 1, decode_content=True)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise RotationError(step, scrub(f"{type(exc).__name__}: {exc}", old)) from None
    if not 200 <= resp.status_code < 300:
        raise RotationError(step, f"{method} {url} answered {resp.status_code}")
    if len(body) > max_bytes:
        raise RotationError(step, f"the answer is longer than {max_bytes} bytes")
    return bytes(body).decode("utf-8", "replace")


# --- writing --------------------------------------------------------------------------------


def _write_new(folder: str, name: str, data: bytes, owner: os.stat_result) -> str:
    """A 0600 temporary file in folder holding data, fsynced; its path."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            with contextlib.suppress(PermissionError):  # keep the owner when we may
                os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_key(path: str, new: str) -> str:
    """Step 2 "Update": replace the key file atomically (a 0600 temporary file in the same
    folder, fsynced, renamed over it, folder fsynced), keeping the replaced file as
    path.previous (0600) for the revoke step. Same owner, same trailing newline. Returns
    the path of the previous copy. A symlink or anything but a regular file is refused."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise RotationError("write", f"{path} is not a regular file (a symlink?): not replaced")
    with open(path, "rb") as fh:
        old_bytes = fh.read()
    folder, name = os.path.split(os.path.abspath(path))
    newline = b"\n" if old_bytes.endswith(b"\n") else b""
    previous = path + PREVIOUS_SUFFIX
    tmp_prev = _write_new(folder, name, old_bytes, st)
    try:
        tmp_new = _write_new(folder, name, new.encode() + newline, st)
    except BaseException:
        os.unlink(tmp_prev)
        raise
    os.replace(tmp_prev, previous)
    os.replace(tmp_new, path)
    _fsync_dir(folder)
    return previous


def drop_previous(previous: str) -> None:
    """The revoked key's copy is worthless now: remove it (less secret material on disk)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(previous)
        _fsync_dir(os.path.dirname(os.path.abspath(previous)))


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def age_days(since: float | None, now: float | None = None) -> float | None:
    if since is None:
        return None
    return round(((now or time.time()) - since) / 86400, 3)
