"""Redaction: passwords, tokens, API keys and Authorization values never leave the process."""

from __future__ import annotations

import io
import json
import logging

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.redaction import HOSTILE
from remediation import redact as redaction
from remediation.logging import configure_logging, get_logger
from remediation.redact import PATTERNS, redact, redact_text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://app:hunter2@db:5432/app", "hunter2"),
        ("redis://:s3cr3t@cache:6379/0", "s3cr3t"),
        ("amqp://guest:guestpw@mq//", "guestpw"),
        ("host=db user=app password=hunter2 dbname=x", "hunter2"),
        ("https://api/x?api_key=abc123&q=1", "abc123"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJIUzI1NiJ9"),
        ("{'token': 'tok-42', 'n': 1}", "tok-42"),
        ('{"password": "pw-9"}', "pw-9"),
        ("postgresql://app:p@ss@db:5432/app", "ss@db"),
        ("host=db sslpassword=keypass sslmode=verify-full", "keypass"),
        ("PGPASSWORD='pg pass' pg_dump", "pg pass"),
        ('{"db_password": "pw-10"}', "pw-10"),
        ("no such table: 946.redis://default:glued-pw@cache:6379/0", "glued-pw"),
        ("postgresql://u:pa/ss@host/db", "pa/ss"),
    ],
)
def test_text_secrets_are_masked(text: str, secret: str) -> None:
    """Each form of secret is replaced by ***."""
    masked = redact_text(text)
    assert secret not in masked and "***" in masked


def test_plain_text_is_left_alone() -> None:
    """Text without secrets is unchanged (no false positives on validation messages)."""
    text = "token: Extra inputs are not permitted; tables: Field required"
    assert redact_text(text) == text


def test_secret_keys_are_masked_deeply() -> None:
    """Values under secret-looking keys are masked at any depth; others are kept."""
    data = {"target": "app", "nested": [{"api_key": "k"}, {"dsn": "postgresql://a:b@h/d"}]}
    assert redact(data) == {"target": "app", "nested": [{"api_key": "***"}, {"dsn": "***"}]}


def test_log_lines_are_redacted_for_structlog_and_stdlib() -> None:
    """Both structlog events and plain logging records (Celery's) are masked."""
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    get_logger("t").info("connecting", dsn="postgresql://u:topsecret@h/d", note="x password=pw1")
    logging.getLogger("celery.x").info("broker redis://:pw2@h:6379/0 ready")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    text = stream.getvalue()
    assert len(lines) == 2
    assert "topsecret" not in text and "pw1" not in text and "pw2" not in text


def test_every_pattern_runs_on_re2() -> None:
    """Each redaction pattern is an RE2 expression: matching time is linear by construction."""
    assert set(PATTERNS) == {"url_password", "key_value", "quoted", "auth_header"}
    assert all(isinstance(p, re2._Regexp) for p in PATTERNS.values())


@pytest.mark.parametrize(
    ("pattern", "label"), [(p, label) for p, inputs in HOSTILE.items() for label in inputs]
)
def test_one_megabyte_of_hostile_input_is_redacted(pattern: str, label: str) -> None:
    """1 MB built to make a backtracking engine go quadratic goes through (bench times it)."""
    text = HOSTILE[pattern][label](1 << 20)
    masked = redact_text(text + " password=tail-secret")
    assert "tail-secret" not in masked and len(masked) <= len(text) + 32


_SECRETISH = st.sampled_from(
    [
        "password",
        "PASSWD",
        "api-key",
        "x_token",
        "Bearer ",
        "Basic ",
        "://",
        ":",
        "@",
        "=",
        "'",
        '"',
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=12), _SECRETISH), max_size=12).map("".join))
def test_the_one_pass_prefilter_changes_nothing(text: str) -> None:
    """redact_text skips the four substitutions when the union of the patterns finds
    nothing: on any text, the result is what the four substitutions alone give."""
    slow = text
    slow = redaction._URL_PASSWORD.sub(lambda m: m.group("head") + redaction.MASK + "@", slow)
    slow = redaction._KV_SECRET.sub(lambda m: m.group("key") + redaction.MASK, slow)
    slow = redaction._QUOTED_SECRET.sub(redaction._quoted, slow)
    slow = str(redaction._AUTH_HEADER.sub(lambda m: m.group("key") + redaction.MASK, slow))
    assert redaction.redact_text(text) == slow
