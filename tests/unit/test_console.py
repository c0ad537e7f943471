"""The web console's pure parts: what TokenAuth lets through, CSRF, the template guard."""

from __future__ import annotations

from datetime import UTC, datetime

from remediation.serve.console import _csrf_ok, _finalize, environment
from remediation.serve.guard import is_console, known_token


def test_only_console_paths_skip_the_bearer_token() -> None:
    assert is_console("/console") and is_console("/console/") and is_console("/console/x")
    for path in ("/alerts", "/consoles", "/console-x", "/metrics", "/", "/alerts/console"):
        assert not is_console(path), path


def test_login_token_compare() -> None:
    tokens = [b"a" * 24, b"b" * 24]
    assert known_token(b"b" * 24, tokens)
    assert not known_token(b"c" * 24, tokens) and not known_token(b"", tokens)
    assert not known_token(b"", [b""])


def test_csrf_needs_the_sessions_token() -> None:
    session = {"csrf": "t" * 43, "user": "u"}
    assert _csrf_ok(session, {"csrf": "t" * 43})
    assert not _csrf_ok(session, {}) and not _csrf_ok(session, {"csrf": ""})
    assert not _csrf_ok(session, {"csrf": "x" * 43}) and not _csrf_ok(None, {"csrf": "t" * 43})


def test_templates_escape_and_redact_everything_printed() -> None:
    assert _finalize(None) == ""
    assert _finalize(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02 03:04:05"
    page = (
        environment()
        .from_string("{{ v }}")
        .render(v="<script>x</script> postgresql://u:hunter2pw@db/x password=abc123")
    )
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "hunter2pw" not in page and "abc123" not in page
