"""The secret shapes the log scan looks for (runbook 004 "Security Check Failures").

Every pattern runs on RE2 (google-re2) over bytes, so matching time is linear in the log
whatever the pattern; operator patterns are validated at start (REMEDIATION_SECRETS__PATTERNS).
A group named ``secret`` marks what is masked (the rest of the match stays readable:
``fa=********``); a pattern without one is masked whole. No pattern crosses a line: the
whitespace they allow is spaces and tabs only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import re2

from remediation.redact import PATTERNS as REDACT_PATTERNS

SECRET_GROUP = "secret"  # noqa: S105 - the name of a regex group
_WORDS = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"


def _from_redact(name: str, group: str) -> str:
    """A pattern of remediation.redact (what logs and audit rows are masked with), held to
    one line and with the group it masks renamed ``secret``."""
    src = str(REDACT_PATTERNS[name].pattern)
    src = src.replace(r"\s*", r"[ \t]*").replace(r"\s+", r"[ \t]+")
    return src.replace(f"(?P<{group}>", f"(?P<{SECRET_GROUP}>")


BUILTIN: dict[str, str] = {
    # runbook 004: grep -i "fa=" (an FA account in a key=value field)
    "ibkr_fa_field": r"(?i:\bfa[ \t]*[=:][ \t]*)[\"']?(?P<secret>[A-Za-z0-9_\-]{2,64})",
    # IBKR account ids: U1234567 (individual), F1234567 (FA master), DU/DF (paper)
    "ibkr_account": r"\b(?P<secret>(?:DU|DF|U|F)[0-9]{6,8})\b",
    "aws_access_key": r"\b(?P<secret>(?:AKIA|ASIA)[0-9A-Z]{16})\b",
    "github_token": r"\b(?P<secret>(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,240}))",
    "slack_token": r"\b(?P<secret>xox[abposr]-[A-Za-z0-9\-]{10,240})",
    "stripe_key": r"\b(?P<secret>(?:sk|rk)_live_[A-Za-z0-9]{16,240})",
    "private_key": r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----",
    "bearer_token": _from_redact("auth_header", "val"),
    "url_password": _from_redact("url_password", "pw"),
    # generic key=value secrets (password=, api_key=, x_token=, "api_key": "..." in JSON)
    # with a value of 8+ characters
    "generic_secret": (
        r"(?i:\b[a-z0-9_]*" + _WORDS + r"[a-z0-9_]*[\"']?[ \t]*[=:][ \t]*)"
        r"[\"']?(?P<secret>[^\s&,;'\"}]{8,})"
    ),
}
"""Built-in patterns by name (REMEDIATION_SECRETS__DISABLED_PATTERNS leaves some out)."""

_NAMED_GROUP = re2.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")


@dataclass(frozen=True)
class Pattern:
    """One named secret shape, compiled over bytes."""

    name: str
    regex: Any
    group: int  # the group masked; 0 is the whole match


def compile_pattern(name: str, source: str) -> Pattern:
    """A pattern as used by the scan; ValueError when RE2 refuses it (not linear-time)."""
    try:
        regex = re2.compile(source.encode())
    except re2.error as exc:
        raise ValueError(f"pattern {name!r} is not RE2 (linear-time): {exc}") from None
    return Pattern(name, regex, regex.groupindex.get(SECRET_GROUP.encode(), 0))


@dataclass(frozen=True)
class PatternSet:
    """The patterns of one configuration, and all of them as one alternation: one pass over
    the text finds the lines that hold any secret; only those lines are matched again one
    pattern at a time (to name the patterns and the bytes to mask)."""

    patterns: tuple[Pattern, ...]
    combined: Any

    def secrets(self, line: bytes) -> list[tuple[str, int, int]]:
        """(pattern name, start, end) of every secret in one line; a span that is masked
        already (all '*': by quarantine_log, or by the application) is no secret."""
        found = []
        for p in self.patterns:
            for m in p.regex.finditer(line):
                start, end = m.span(p.group)
                if end > start and line[start:end].strip(b"*"):
                    found.append((p.name, start, end))
        return found

    def names(self, line: bytes) -> list[str]:
        """The names of the patterns that match the line, in pattern order, each once."""
        return sorted({name for name, _, _ in self.secrets(line)}, key=self._order)

    def _order(self, name: str) -> int:
        return next(i for i, p in enumerate(self.patterns) if p.name == name)


def sources(
    operator: Mapping[str, str], disabled: list[str] | tuple[str, ...] = ()
) -> dict[str, str]:
    """Built-in patterns (less the disabled ones) and the operator's, by name."""
    chosen = {k: v for k, v in BUILTIN.items() if k not in set(disabled)}
    return {**chosen, **operator}


def pattern_set(
    operator: Mapping[str, str], disabled: list[str] | tuple[str, ...] = ()
) -> PatternSet:
    """The compiled set for a configuration; ValueError naming a pattern RE2 refuses."""
    named = sources(operator, disabled)
    patterns = tuple(compile_pattern(n, s) for n, s in named.items())
    if not patterns:
        raise ValueError("no pattern left to scan with")
    alternation = "|".join(f"(?:{_NAMED_GROUP.sub('(?:', s)})" for s in named.values())
    return PatternSet(patterns, re2.compile(alternation.encode()))


def mask(line: bytes, spans: list[tuple[str, int, int]]) -> bytes:
    """The line with every secret byte replaced by '*': same length, so every offset in the
    file stays where it was (the scan state, the lines written after it)."""
    out = bytearray(line)
    for _, start, end in spans:
        out[start:end] = b"*" * (end - start)
    return bytes(out)
