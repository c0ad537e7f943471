"""The secret shapes of the log scan, as pure logic: what each built-in pattern finds, the
near misses it leaves, and masking that keeps every byte offset."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from remediation.security.log_patterns import BUILTIN, mask, pattern_set

SAMPLES = {
    "ibkr_fa_field": b"INFO allocation FA = F1234567 done",
    "ibkr_account": b"DEBUG paper account DU1234567 synced",
    "aws_access_key": b"boto key AKIAIOSFODNN7EXAMPLE loaded",
    "github_token": b"push with ghp_" + b"a1B2" * 9,
    "slack_token": b"slack xoxb-123456789012-abcdef",
    "stripe_key": b"charge with sk_live_" + b"4eC39HqLyjWDarjtT1zdp7dc",
    "private_key": b"-----BEGIN RSA PRIVATE KEY-----",
    "bearer_token": b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30",
    "url_password": b"connecting postgresql://bot:s3cr3t-pw@db:5432/app",
    "generic_secret": b'config {"api_key": "k-9f8e7d6c5b4a"}',
}
NEAR_MISSES = (
    b"2026-11-28 INFO order filled symbol=AAPL qty=10 status=200 took=12ms",
    b"DEBUG cache key=U12345 failover=false fa_enabled=1 token_count=812",
    b'{"event": "update", "fa_group": "growth", "max_tokens": 512}',
    b"GET /api/v2/quotes?symbol=MSFT&page=3 HTTP/1.1 200 1234",
    b"https://api.example.com/v1/orders status=429 password=short",
    b"Bearer abc",
)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_each_builtin_pattern_finds_its_shape(name: str) -> None:
    """A sample of each built-in shape is found and named by that pattern."""
    names = pattern_set({}).names(SAMPLES[name])
    assert name in names


@pytest.mark.parametrize("line", NEAR_MISSES)
def test_near_misses_are_not_secrets(line: bytes) -> None:
    """Short account-like numbers, fa_* fields, token counts and short values are no secret,
    neither for the one-pass alternation nor for the patterns one by one."""
    ps = pattern_set({})
    assert ps.secrets(line) == [] and ps.combined.search(line) is None


def test_masking_keeps_length_and_context_and_is_final() -> None:
    """Masked: same length, the field name kept (fa=********), and a masked line holds no
    secret any more (a span of '*' is not one)."""
    ps = pattern_set({})
    line = b"fa=F1234567 url=redis://u:pw-long-secret@h/0 ok"
    masked = mask(line, ps.secrets(line))
    assert len(masked) == len(line)
    assert masked.startswith(b"fa=********") and masked.endswith(b"@h/0 ok")
    assert b"F1234567" not in masked and b"pw-long-secret" not in masked
    assert ps.secrets(masked) == []


def test_operator_patterns_mask_their_secret_group_or_all() -> None:
    """An operator pattern with a group named secret masks that group; without one, the
    whole match; a disabled built-in is not used."""
    ps = pattern_set({"order_token": r"otk=(?P<secret>[A-Z0-9]{12})", "ticket": r"TKT-[0-9]{6}"})
    line = b"otk=ABCDEF123456 TKT-123456 fa=F1234567"
    masked = mask(line, ps.secrets(line))
    assert masked == b"otk=************ ********** fa=********"
    quiet = pattern_set({}, ["ibkr_fa_field", "ibkr_account"])
    assert quiet.secrets(b"fa=F1234567") == []


def test_a_pattern_re2_refuses_is_named() -> None:
    """A backreference (not linear-time) is refused with the pattern's name."""
    with pytest.raises(ValueError, match="'bad'"):
        pattern_set({"bad": r"(a+)\1"})


def test_the_benchmarks_ere_translations_select_the_same_lines() -> None:
    """bench/log_secrets.py compares the scan with `grep -E`: each ERE translation selects
    exactly the sample and near-miss lines its RE2 pattern does."""
    from bench.log_secrets import ERE_PATTERNS

    grep = shutil.which("grep")
    if grep is None:
        pytest.skip("grep not installed")
    lines = [*SAMPLES.values(), *NEAR_MISSES]
    ps = pattern_set({})
    for name, ere in ERE_PATTERNS.items():
        out = subprocess.run(
            [grep, "-E", "-n", "-e", ere],
            input=b"\n".join(lines) + b"\n",
            capture_output=True,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        ).stdout
        by_grep = {int(row.split(b":", 1)[0]) for row in out.splitlines()}
        by_re2 = {n for n, line in enumerate(lines, 1) if name in ps.names(line)}
        assert by_grep == by_re2, name
