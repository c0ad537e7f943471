"""Enhanced monitoring (runbook 001 "Security Incident Response 3. Enable enhanced monitoring:
increase log level"): an application's log level raised for a while, in a Redis key it polls
(set with a TTL: it reverts by itself) and/or a key of its YAML or ini file (the previous
value recorded in the state Redis first, restored at expiry).

YAML is edited with ruamel.yaml's round-trip mode (comments, order and quoting kept); an ini
file line by line (configparser would drop its comments). Files are replaced atomically: a
temporary file in the same folder with the original's mode and owner, fsynced, renamed over
it, the folder fsynced. A symlink is never followed or replaced.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import tempfile
from typing import Any

import redis
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from remediation.guards.keys import LOG_LEVEL
from remediation.settings.monitoring import LogLevelApp

MAX_FILE_BYTES = 1 << 20
"""A configuration file larger than this is not edited."""

# KEYS: 1 the app's level key. ARGV: 1 level, 2 seconds. Returns {status, previous, ttl}.
# A key holding another level, or the same level without a TTL, is someone's choice: left.
SET_LEVEL = """
local prev = redis.call('GET', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if prev and (string.upper(prev) ~= string.upper(ARGV[1]) or ttl < 0) then
  return {'left_alone', prev, tostring(ttl)}
end
local seconds = tonumber(ARGV[2])
if prev and ttl > seconds then seconds = ttl end
redis.call('SET', KEYS[1], ARGV[1], 'EX', seconds)
return {prev and 'extended' or 'raised', prev or '', tostring(seconds)}
"""


class LevelFileError(Exception):
    """The configuration file cannot be read or edited as configured."""


def record_key(app: str) -> str:
    return f"{LOG_LEVEL}app:{app}"


INDEX_KEY = LOG_LEVEL + "index"
"""Set of the applications with a raise on record."""


# --- reading and editing the value ----------------------------------------------------------


def _yaml() -> YAML:
    y = YAML()  # round-trip: comments and order kept
    y.preserve_quotes = True
    return y


def _yaml_parent(doc: Any, path: list[str], file: str) -> Any:
    node = doc
    for part in path[:-1]:
        node = node.get(part) if hasattr(node, "get") else None
        if node is None or not hasattr(node, "get"):
            raise LevelFileError(f"{file} has no mapping at {'.'.join(path[:-1])}")
    if not hasattr(node, "get"):
        raise LevelFileError(f"{file} is not a YAML mapping")
    return node


def yaml_edit(text: str, dotted: str, value: str | None, file: str) -> tuple[str | None, str]:
    """(the value at dotted before, the text with value there; None deletes the key)."""
    y = _yaml()
    try:
        doc = y.load(text)
    except YAMLError as exc:
        raise LevelFileError(f"{file} is not YAML: {str(exc)[:200]}") from None
    if doc is None:  # an empty file: nothing to hold a level (and "null" must not appear)
        raise LevelFileError(f"{file} is empty: no {dotted} to set")
    path = dotted.split(".")
    parent = _yaml_parent(doc, path, file)
    before = parent.get(path[-1])
    if value is None:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    out = io.StringIO()
    y.dump(doc, out)
    return (None if before is None else str(before)), out.getvalue()


_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")
_OPTION = re.compile(
    r"^(?P<head>\s*(?P<key>[^=:\s#;][^=:]*?)\s*[=:]\s*)(?P<value>.*?)(?P<tail>\s*)$"
)


def ini_edit(text: str, dotted: str, value: str | None, file: str) -> tuple[str | None, str]:
    """The same for an ini file, line by line: section.option; comments and layout kept."""
    section, option = dotted.split(".", 1)
    lines = text.splitlines(keepends=True)
    current, start, end, found = None, None, len(lines), None
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if m:
            if current is not None and current.lower() == section.lower():
                end = i
                break
            current = m.group("name").strip()
            if current.lower() == section.lower():
                start = i
            continue
        if start is not None and current is not None and current.lower() == section.lower():
            o = _OPTION.match(line.rstrip("\r\n"))
            if o and o.group("key").strip().lower() == option.lower():
                found = i
    if start is None:
        raise LevelFileError(f"{file} has no section [{section}]")
    if found is not None:
        raw = lines[found]
        newline = raw[len(raw.rstrip("\r\n")) :]
        o = _OPTION.match(raw.rstrip("\r\n"))
        assert o is not None
        before: str | None = o.group("value")
        if value is None:
            del lines[found]
        else:
            lines[found] = o.group("head") + value + o.group("tail") + newline
        return before, "".join(lines)
    if value is not None:
        last = end
        while last - 1 > start and not lines[last - 1].strip():
            last -= 1
        if last > 0 and not lines[last - 1].endswith("\n"):
            lines[last - 1] += "\n"
        lines.insert(last, f"{option} = {value}\n")
    return None, "".join(lines)


def _edit(app: LogLevelApp, text: str, value: str | None) -> tuple[str | None, str]:
    assert app.file is not None and app.file_key is not None
    edit = yaml_edit if app.file_format == "yaml" else ini_edit
    return edit(text, app.file_key, value, app.file)


def read_file(path: str) -> tuple[str, os.stat_result]:
    """The file's text and stat; LevelFileError for a symlink, a non-file or a huge file."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise LevelFileError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise LevelFileError(f"{path} is not a regular file (a symlink?): not edited")
    if st.st_size > MAX_FILE_BYTES:
        raise LevelFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes: not edited")
    with open(path, encoding="utf-8") as fh:
        return fh.read(), st


def current_level(app: LogLevelApp) -> str | None:
    """The level the file holds now (None: not set)."""
    assert app.file is not None
    text, _ = read_file(app.file)
    return _edit(app, text, None)[0]


def set_level(app: LogLevelApp, value: str | None) -> str | None:
    """Write value at the app's key (None removes the key), atomically; the value before."""
    assert app.file is not None
    text, st = read_file(app.file)
    before, changed = _edit(app, text, value)
    if changed != text:
        replace_atomically(app.file, changed.encode("utf-8"), st)
    return before


def replace_atomically(path: str, data: bytes, st: os.stat_result) -> None:
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            with contextlib.suppress(PermissionError):
                os.fchown(fh.fileno(), st.st_uid, st.st_gid)
            os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode) & 0o777)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def same_level(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().upper() == b.strip().upper()


# --- the record of a raise ------------------------------------------------------------------


def read_record(state: redis.Redis, app: str) -> dict[str, str]:
    raw = state.hgetall(record_key(app))
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def expires_at(record: dict[str, str]) -> float:
    """When a recorded raise ends; 0 (long past) when the record cannot tell."""
    try:
        return float(record.get("expires_at") or 0)
    except ValueError:
        return 0.0


def recorded_apps(state: redis.Redis, limit: int = 1000) -> list[str]:
    """Apps with a file raise on record (at most limit), sorted."""
    names = []
    for i, member in enumerate(state.sscan_iter(INDEX_KEY, count=100)):
        if i >= limit:
            break
        names.append(member.decode() if isinstance(member, bytes) else str(member))
    return sorted(names)


def write_record(state: redis.Redis, app: str, fields: dict[str, str]) -> None:
    mapping: dict[Any, Any] = dict(fields)  # redis-py's Mapping is invariant in its types
    pipe = state.pipeline(transaction=True)
    pipe.hset(record_key(app), mapping=mapping)
    pipe.sadd(INDEX_KEY, app)
    pipe.execute()


def drop_record(state: redis.Redis, app: str) -> None:
    pipe = state.pipeline(transaction=True)
    pipe.delete(record_key(app))
    pipe.srem(INDEX_KEY, app)
    pipe.execute()
