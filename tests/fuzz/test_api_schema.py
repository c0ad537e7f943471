"""The HTTP API fuzzed from its own OpenAPI description (issue 14, "Bad input").

A real `remediation serve` subprocess with its own Redis and audit database (no worker: an
approved call waits in the broker, where the test counts it) answers schemathesis' cases for
every operation in /openapi.json, positive and negative, with a valid token: never a 5xx,
nothing dispatched or run, no approval decided except by a case that validly decided it,
every rejected /alerts body audited. The same operations without a token, or with a wrong
one, are 401s that change nothing; the signed link pages refuse forged, expired and altered
signatures with a 403 and decide nothing. No alert rule is configured, so no webhook body,
however valid, maps to an action: any message in the broker came from an approval.

Examples per operation and mode: 25 (REMEDIATION_CHAOS_FULL=1, as `make chaos` sets: 250).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from remediation import signing
from remediation.approvals import links
from remediation.approvals import state as approval_state
from remediation.audit.store import AuditStore
from remediation.plans import item, plan_of
from tests.support.alerting import Process, serve
from tests.support.audit import Audit
from tests.support.env import TEST_SIGNING_KEY, process_env
from tests.support.services import RedisServer, as_url, scratch_database

TOKEN = "schema-fuzz-token-" + "0123456789abcdef" * 2
EXAMPLES = 250 if os.environ.get("REMEDIATION_CHAOS_FULL") else 25
OPERATIONS = [
    "POST /alerts",
    "GET /approvals",
    "GET /approvals/{approval_id}",
    "POST /approvals/{approval_id}/approve",
    "POST /approvals/{approval_id}/deny",
]
DECIDING = OPERATIONS[3:]
KEY = TEST_SIGNING_KEY.encode()
REJECTED = (
    "SELECT count(*) AS n FROM check_runs WHERE check_name = 'alertmanager' AND status = 'rejected'"
)
RAN = "SELECT count(*) AS n FROM action_runs WHERE outcome IN ('succeeded', 'failed')"
CASES: Counter[str] = Counter()
"""Cases sent per operation and mode, printed at the end of the session (conftest)."""


@dataclass
class Api:
    url: str
    serve: Process
    state: redis.Redis
    broker: redis.Redis
    audit: Audit
    schema: Any
    untouchable: list[str]
    """Pending approvals no case may decide (ids schemathesis cannot guess)."""
    pools: dict[str, list[str]]
    """Pending approvals each deciding operation is aimed at: a 200 may decide each once."""
    decided: dict[str, str] = field(default_factory=dict)
    """Approval id -> the result of the one case that decided it."""

    def count(self, query: str) -> int:
        return int(self.audit.rows(query)[0]["n"])

    def audit_counts(self) -> dict[str, int]:
        tables = self.audit.rows(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_type = 'BASE TABLE' ORDER BY table_name"
        )
        return {
            t["table_name"]: self.count(f'SELECT count(*) AS n FROM "{t["table_name"]}"')
            for t in tables
        }

    def snapshot(self) -> dict[bytes, bytes | None]:
        """Every state Redis key with its serialized value."""
        return {k: self.state.dump(k) for k in sorted(self.state.scan_iter(count=1000))}

    def queued(self) -> int:
        """Messages waiting in the broker (any list in its database)."""
        return sum(
            int(self.broker.llen(k))
            for k in self.broker.scan_iter(count=1000)
            if self.broker.type(k) == b"list"
        )


def _seed(r: redis.Redis, n: int, tag: str) -> list[str]:
    return [
        approval_state.ask(
            r,
            action="dedupe_job_queue",
            target="self",
            resource=f"self/jobs:{tag}{i}",
            params={"target": "self", "key": f"jobs:{tag}{i}"},
            plan=plan_of(
                f"remove duplicates from jobs:{tag}{i}", [item("job-a", "remove 2 copies")]
            ).model_dump(),
            idempotency_key=f"schema-fuzz-{tag}-{i}",
            trigger=None,
            fingerprint=None,
            ttl_seconds=3600,
        ).approval.id
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def api(pg_admin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`remediation serve` on its own Redis and audit database, approvals seeded."""
    server = RedisServer().start()
    try:
        with scratch_database(pg_admin, "rem_audit_schema") as dsn:
            AuditStore(as_url(dsn)).upgrade()
            env = process_env(
                server,
                as_url(dsn),
                REMEDIATION_SERVE__TOKENS=json.dumps([TOKEN]),
                REMEDIATION_SERVE__MAX_BODY_BYTES="65536",
                REMEDIATION_ALERTS__MAX_ALERTS="50",
            )
            process, url = serve(env, tmp_path_factory.mktemp("serve"))
            process.start()
            state = redis.Redis.from_url(server.url(0))
            broker = redis.Redis.from_url(server.url(1))
            try:
                schema = schemathesis.openapi.from_url(url + "/openapi.json")
                yield Api(
                    url,
                    process,
                    state,
                    broker,
                    Audit(as_url(dsn)),
                    schema,
                    untouchable=_seed(state, 5, "keep"),
                    pools={label: _seed(state, 12, f"pool{n}") for n, label in enumerate(DECIDING)},
                )
            finally:
                process.stop()
                state.close()
                broker.close()
    finally:
        server.stop()


def _examples(n: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_openapi_lists_exactly_the_fuzzed_operations(api: Api) -> None:
    """Every operation of /openapi.json is one this module fuzzes (a new one fails here)."""
    labels = {op.ok().label for op in api.schema.get_all_operations()}
    assert labels == set(OPERATIONS)


def _check_authorized(api: Api, label: str, case: Any, aimed: bool) -> None:
    rejected, queued = api.count(REJECTED), api.queued()
    # the token always: a negative case may have made the Authorization header wrong
    others = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers = others | _auth(TOKEN)
    reply = case.call(base_url=api.url, timeout=30)
    status = reply.status_code
    assert 200 <= status < 500 and status != 401, (label, status, reply.text, case.body)
    if label == "POST /alerts":
        if status == 422:  # an authenticated caller's bad payload is audited
            assert api.count(REJECTED) == rejected + 1, reply.text
        if status == 200:
            assert reply.json()["mapped"] == 0
    approval_id = (case.path_parameters or {}).get("approval_id")
    if label in DECIDING and status == 200:
        assert aimed and approval_id in api.pools[label] and approval_id not in api.decided, (
            reply.text
        )
        api.decided[approval_id] = reply.json()["result"]
        approved = api.decided[approval_id] == "approved"
        assert api.queued() == queued + approved  # an approval sends its one call, a denial none
    else:
        assert api.queued() == queued, (label, status, reply.text)
    assert api.count(RAN) == 0


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("label", OPERATIONS)
def test_generated_cases_with_the_token_are_never_5xx_and_run_nothing(
    api: Api, label: str, mode: GenerationMode
) -> None:
    """Schemathesis' cases for one operation, with the token, answer 2xx/4xx and run nothing."""
    operation = api.schema[label.split(" ", 1)[1]][label.split(" ", 1)[0]]

    @_examples(EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Any) -> None:
        CASES[f"{label} {mode.value}"] += 1
        _check_authorized(api, label, case, aimed=False)

    one()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("label", DECIDING)
def test_deciding_cases_aimed_at_real_approvals_decide_each_at_most_once(
    api: Api, label: str, mode: GenerationMode
) -> None:
    """Approve/deny cases on seeded approvals: only a 200 decides, once, as it said."""
    path = label.split(" ", 1)[1]
    strategies = [
        api.schema[path]["POST"].as_strategy(
            generation_mode=mode, path_parameters={"approval_id": approval_id}
        )
        for approval_id in api.pools[label]
    ]

    @_examples(EXAMPLES)
    @given(case=st.one_of(strategies))
    def one(case: Any) -> None:
        CASES[f"{label} {mode.value} (seeded id)"] += 1
        _check_authorized(api, label, case, aimed=True)

    one()


def test_after_the_fuzz_only_validly_decided_approvals_moved(api: Api) -> None:
    """The seeded approvals no 200 decided are all still pending; the decided ones are as
    their 200 said; nothing ran."""
    if not any(" (seeded id)" in name for name in CASES):
        pytest.skip("checks what the fuzz tests above did: run the module")
    for approval_id in api.untouchable:
        assert approval_state.get(api.state, approval_id).state == "pending"  # type: ignore[union-attr]
    for approval_id in [i for pool in api.pools.values() for i in pool]:
        found = approval_state.get(api.state, approval_id)
        assert found is not None
        assert found.state == api.decided.get(approval_id, "pending"), approval_id
    assert api.count(RAN) == 0
    results = Counter(api.decided.values())
    assert results["approved"] > 0 and results["denied"] > 0  # both ways were exercised
    assert api.queued() == results["approved"]


WRONG = [None, "", "wrong" + TOKEN[5:], TOKEN[:-1], TOKEN + "x", "Basic " + TOKEN]


@pytest.mark.parametrize("label", OPERATIONS)
def test_generated_cases_without_a_valid_token_are_401_and_change_nothing(
    api: Api, label: str
) -> None:
    """The same operations with no token, an empty or a wrong one answer 401; the audit's
    row counts and the state Redis stay exactly as they were."""
    operation = api.schema[label.split(" ", 1)[1]][label.split(" ", 1)[0]]
    counts, keys, queued = api.audit_counts(), api.snapshot(), api.queued()

    @_examples(max(EXAMPLES // 2, 10))
    @given(
        case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
        | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        token=st.sampled_from(WRONG),
    )
    def one(case: Any, token: str | None) -> None:
        CASES[f"{label} no/wrong token"] += 1
        if token is None:
            headers = {}
        elif token.startswith("Basic "):
            headers = {"Authorization": token}
        else:
            headers = _auth(token)
        kwargs = case.as_transport_kwargs(base_url=api.url)
        kwargs["headers"] = {
            k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "authorization"
        } | headers
        reply = requests.request(**kwargs, timeout=30)
        assert reply.status_code == 401, (reply.status_code, reply.text)
        assert reply.headers["www-authenticate"] == "Bearer"

    one()
    assert api.audit_counts() == counts
    assert api.snapshot() == keys
    assert api.queued() == queued


def _link_parts(url: str) -> tuple[str, dict[str, str]]:
    path, _, query = url.partition("?")
    return path, dict(p.split("=", 1) for p in query.split("&"))


@dataclass
class Forgery:
    """How a link was made wrong: what the test sends instead of a genuine link's query."""

    approval_id: str
    query: dict[str, str]


def _forgeries(api: Api) -> st.SearchStrategy[Forgery]:
    keep = st.sampled_from(api.untouchable)
    decision = st.sampled_from(["approve", "deny"])
    future = int(time.time()) + 3600
    text = st.text(max_size=70)

    def genuine(approval_id: str, d: str, exp: int, key: bytes = KEY) -> dict[str, str]:
        return _link_parts(links.make(key, "http://x", approval_id, d, exp))[1]

    forged = st.builds(
        lambda i, d, exp, sig: Forgery(i, {"d": d, "exp": exp, "sig": sig}),
        keep,
        decision | text,
        st.integers(0, 10**13).map(str) | text,
        st.text(alphabet="0123456789abcdef", min_size=0, max_size=64) | text,
    )
    wrong_key = st.builds(
        lambda i, d: Forgery(i, genuine(i, d, future, b"not-the-key")), keep, decision
    )
    expired = st.builds(
        lambda i, d, ago: Forgery(i, genuine(i, d, int(time.time()) - ago)),
        keep,
        decision,
        st.integers(0, 10**6),
    )

    def altered(i: str, d: str, what: str, other: str) -> Forgery:
        query = genuine(i, d, future)
        if what == "decision":
            query["d"] = "deny" if d == "approve" else "approve"
        elif what == "expiry":
            query["exp"] = str(future + 1)
        elif what == "signature":
            sig = query["sig"]
            query["sig"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        elif what == "approval":  # a genuine link of one approval used on another
            return Forgery(other, query)
        return Forgery(i, query)

    changed = st.builds(
        altered,
        keep,
        decision,
        st.sampled_from(["decision", "expiry", "signature", "approval"]),
        keep,
    ).filter(lambda f: f.query != genuine(f.approval_id, f.query["d"], future))
    return st.one_of(forged, wrong_key, expired, changed)


def test_link_pages_refuse_forged_expired_and_altered_signatures_with_403(api: Api) -> None:
    """GET and POST of a link with a forged, expired or altered signature answer 403 and
    decide nothing; a genuine link's GET shows the plan (200) and decides nothing either."""
    keep = api.untouchable[0]
    path, query = _link_parts(links.make(KEY, api.url, keep, "approve", int(time.time()) + 600))
    shown = requests.get(path, params=query, timeout=10)
    assert shown.status_code == 200 and "jobs:keep0" in shown.text
    counts, keys, queued = api.audit_counts(), api.snapshot(), api.queued()
    url = f"{api.url}/approvals/{keep}/link"
    # found by this fuzz: a non-ASCII signature was a 503 (signing.valid raised), an
    # over-long field a 422 audited as a rejected webhook (a stranger writing to the audit)
    assert requests.get(url, params={**query, "sig": "é" * 64}, timeout=10).status_code == 403
    assert requests.post(url, data={**query, "sig": "é" * 64}, timeout=10).status_code == 403
    assert requests.get(url, params={**query, "d": "x" * 11}, timeout=10).status_code == 422

    @_examples(max(EXAMPLES * 2, 40))
    @given(forgery=_forgeries(api), reason=st.text(max_size=40))
    def one(forgery: Forgery, reason: str) -> None:
        CASES["GET+POST /approvals/{id}/link forged"] += 1
        url = f"{api.url}/approvals/{forgery.approval_id}/link"
        page = requests.get(url, params=forgery.query, timeout=10)
        q = forgery.query  # fields over the page's query limits are a 422 (not audited)
        over = len(q["d"]) > 10 or len(q["exp"]) > 12 or len(q["sig"]) > 64
        assert page.status_code in ((403, 422) if over else (403,)), (page.status_code, forgery)
        form = {**forgery.query, "reason": reason}
        posted = requests.post(url, data=form, timeout=10)
        assert posted.status_code == 403, (posted.status_code, forgery)

    one()
    assert api.audit_counts() == counts
    assert api.snapshot() == keys
    assert api.queued() == queued


def test_a_genuine_link_post_decides_its_approval_once(api: Api) -> None:
    """A genuine signed link's POST decides the one approval it names (200), a second is 409."""
    target = _seed(api.state, 1, "link")[0]
    path, query = _link_parts(links.make(KEY, api.url, target, "deny", int(time.time()) + 600))
    assert requests.post(path, data=query, timeout=10).status_code == 200
    assert requests.post(path, data=query, timeout=10).status_code == 409
    assert approval_state.get(api.state, target).state == "denied"  # type: ignore[union-attr]
    assert signing.valid(
        KEY, "approval_link", {"id": target, "d": "deny", "exp": int(query["exp"])}, query["sig"]
    )


def test_report_cases_per_operation(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    """Every operation got generated cases (the counts are printed for the report)."""
    if not CASES:
        pytest.skip("counts what the fuzz tests above did: run the module")
    with capsys.disabled():
        print("\nschema fuzz cases per operation and mode:")
        for name, n in sorted(CASES.items()):
            print(f"  {name:60} {n:5}")
    for label in OPERATIONS:
        assert CASES[f"{label} positive"] > 0 and CASES[f"{label} negative"] > 0
