"""Incident and hysteresis state (remediation.guards.incidents, .streaks) and the status
enums (remediation.outcomes), in-process on fakeredis."""

from __future__ import annotations

import json

import fakeredis
from psycopg.adapt import PyFormat, Transformer

from remediation.guards import incidents, keys, streaks
from remediation.outcomes import CheckStatus, Decision, Outcome, Verification
from remediation.redact import redact, redact_text
from remediation.settings import GuardSettings


def test_a_condition_joins_its_open_incident_until_it_recovers(
    state: fakeredis.FakeRedis,
) -> None:
    """The first finding opens the incident, the next joins it; recovery closes it."""
    first = incidents.open_or_join(state, "fp", "fp-1", ttl=60)
    again = incidents.open_or_join(state, "fp", "fp-2", ttl=60)
    assert (first, again) == ("fp-1", "fp-1")
    incidents.settle(state, "fp", "act:res:fp-1", recovered=True)
    assert incidents.open_or_join(state, "fp", "fp-3", ttl=60) == "fp-3"


def test_a_fix_that_did_not_recover_frees_its_claim_and_keeps_the_incident(
    state: fakeredis.FakeRedis,
) -> None:
    """Not recovered: the idempotency record goes, the incident stays open."""
    incidents.open_or_join(state, "fp", "fp-1", ttl=60)
    state.set(keys.idempotency("act:res:fp-1"), "done")
    incidents.settle(state, "fp", "act:res:fp-1", recovered=False)
    assert state.get(keys.idempotency("act:res:fp-1")) is None
    assert state.get(keys.incident("fp")) == b"fp-1"


def test_new_incident_ids_name_their_condition_and_differ() -> None:
    """Two incidents of one condition get different names, both led by its fingerprint."""
    a, b = incidents.new_id("fp"), incidents.new_id("fp")
    assert a != b and a.startswith("fp-") and b.startswith("fp-")


def test_streaks_count_consecutive_runs_and_restart_when_missed(
    state: fakeredis.FakeRedis,
) -> None:
    """A condition missing from one run starts again from one."""
    assert streaks.count(state, "chk", "t", ["a", "b"]) == [1, 1]
    assert streaks.count(state, "chk", "t", ["a", "b"]) == [2, 2]
    assert streaks.count(state, "chk", "t", ["a"]) == [3]
    assert streaks.count(state, "chk", "t", ["b", "a"]) == [1, 4]
    assert 0 < state.ttl(keys.streak("chk", "t")) <= streaks.STREAK_TTL


def test_streaks_needed_takes_the_per_check_override() -> None:
    """consecutive_overrides wins over consecutive_runs for its check only."""
    g = GuardSettings(consecutive_runs=2, consecutive_overrides={"slow": 3})
    assert (streaks.needed(g, "slow"), streaks.needed(g, "other")) == (3, 2)


def test_statuses_are_stored_as_the_strings_the_schema_documents() -> None:
    """JSON and psycopg write each member as its plain string value."""
    members = [*CheckStatus, *Decision, *Outcome, *Verification]
    dumper = Transformer()
    for m in members:
        assert json.loads(json.dumps(m)) == m.value
        assert bytes(dumper.get_dumper(m, PyFormat.TEXT).dump(m)) == m.value.encode()
    assert {Outcome.DRY_RUN, "succeeded"} == {"dry_run", Outcome.SUCCEEDED}


def test_a_status_in_a_log_line_or_audit_text_is_redacted_as_text() -> None:
    """redact() takes a StrEnum like any string (re2 cannot rebuild a StrEnum)."""
    assert redact({"outcome": Outcome.SUCCEEDED}) == {"outcome": "succeeded"}
    assert redact_text(Verification.NOT_RECOVERED) == "not_recovered"
