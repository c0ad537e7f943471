"""The webhook probe: URL shape, name resolution (kept off the network), the opt-in test POST."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from remediation.doctor import webhook as webhook_probe
from remediation.settings import Settings
from tests.support.http_doubles import WebhookReceiver


def _settings(url: str | None) -> Settings:
    return Settings(notify={"webhook_url": url})


def test_unset_is_ok_and_sends_nothing() -> None:
    """No webhook configured: one ok row, even with send_test."""
    rows = webhook_probe.probe(_settings(None), send_test=True)
    assert [(r.status, r.what) for r in rows] == [("ok", "configured")]


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example/T0KEN", "hooks.example/T0KEN", "https:///T0KEN", "http://h:99999/"]
)
def test_malformed_url_fails_without_echoing_it(url: str) -> None:
    """A URL without http(s) scheme or host, or with a bad port, is one fail row naming the
    variable; the URL's path (the hook's secret) is never shown."""
    rows = webhook_probe.probe(_settings(url))
    assert [(r.status, r.what) for r in rows] == [("fail", "URL well-formed")]
    assert "REMEDIATION_NOTIFY__WEBHOOK_URL" in rows[0].fix
    assert "T0KEN" not in json.dumps(rows[0].as_dict())


def test_unresolvable_host_fails_off_the_network() -> None:
    """A host under .invalid does not resolve: a fail row. Run in a private network
    namespace (unshare -n) so the resolver's query cannot leave the machine: this host's
    resolv.conf names a network DNS server."""
    if not shutil.which("unshare"):
        pytest.skip("unshare not installed")
    code = (
        "import json; from remediation.doctor import webhook as w;"
        "from remediation.settings import Settings;"
        "s = Settings(notify={'webhook_url': 'https://hooks.invalid/services/T0KEN'});"
        "print(json.dumps([r.as_dict() for r in w.probe(s, send_test=True)]))"
    )
    done = subprocess.run(
        ["unshare", "-n", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"unshare -n refused: {done.stderr.strip()[:200]}")
    rows = json.loads(done.stdout)
    assert [(r["status"], r["what"]) for r in rows] == [
        ("ok", "URL well-formed"),
        ("fail", "host resolves"),
    ], rows
    assert rows[1]["target"] == "https://hooks.invalid"
    assert "T0KEN" not in done.stdout


def test_resolver_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver that hangs is given up on after the timeout (getaddrinfo has none)."""

    def hang(*args: object, **kwargs: object) -> list[object]:
        time.sleep(5)
        raise OSError("the resolver gave up")

    monkeypatch.setattr(webhook_probe.socket, "getaddrinfo", hang)
    started = time.monotonic()
    why = webhook_probe.resolve("slow.example", 443, timeout=0.3)
    assert time.monotonic() - started < 2
    assert why == "no answer from the resolver within 0.3 s"


def test_resolvable_host_sends_nothing_without_send_test(webhook: WebhookReceiver) -> None:
    """A well-formed URL on 127.0.0.1: two ok rows and nothing posted."""
    before = len(webhook.bodies)
    rows = webhook_probe.probe(_settings(webhook.url))
    assert [(r.status, r.what) for r in rows] == [
        ("ok", "URL well-formed"),
        ("ok", "host resolves"),
    ]
    assert len(webhook.bodies) == before
    assert "secret-path" not in json.dumps([r.as_dict() for r in rows])


def test_send_test_posts_one_test_message(webhook: WebhookReceiver) -> None:
    """With send_test the receiver gets exactly one harmless test message; a row says so."""
    before = len(webhook.bodies)
    rows = webhook_probe.probe(_settings(webhook.url), send_test=True)
    assert rows[-1].status == "ok" and rows[-1].what == "test message delivered", rows
    assert webhook.bodies[before:] == [webhook_probe.TEST_MESSAGE]
    assert all("T0KEN" not in json.dumps(r.as_dict()) for r in rows)


def test_send_test_rejected_answer_fails(webhook: WebhookReceiver) -> None:
    """A hook answering 404 (revoked) is a fail row with the HTTP status."""
    webhook.status = 404
    try:
        rows = webhook_probe.probe(_settings(webhook.url), send_test=True)
    finally:
        webhook.status = 200
    assert (rows[-1].status, rows[-1].detail) == ("fail", "HTTP 404")
