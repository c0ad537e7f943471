"""Where tests point the code under test: REMEDIATION_* environments for in-process settings
and for worker or CLI subprocesses, and the rule for a missing service (skip locally, fail
in CI)."""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.support.services import RedisServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


TEST_SIGNING_KEY = "test-signing-key-" + "0123456789abcdef" * 2


def missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not available")


def service_env(redis_server: RedisServer, audit_dsn: str, **extra: str) -> dict[str, str]:
    """REMEDIATION_* variables pointing at the test services."""
    env = {
        "REMEDIATION_STATE_REDIS_URL": redis_server.url(0),
        "REMEDIATION_BROKER_URL": redis_server.url(1),
        "REMEDIATION_RESULT_BACKEND": redis_server.url(2),
        "REMEDIATION_AUDIT_DSN": audit_dsn,
        "REMEDIATION_SIGNING_KEY": TEST_SIGNING_KEY,
        "REMEDIATION_LOG_FORMAT": "json",
        "REMEDIATION_VERIFY__DELAY_SECONDS": "0.5",
        # each test worker serves metrics on a free port from a directory of its own
        "REMEDIATION_METRICS__PORT": "0",
        "REMEDIATION_METRICS__MULTIPROC_DIR": tempfile.mkdtemp(prefix="rem-metrics-"),
        # actions run when called unless a test asks for approvals (tests/.../test_approvals*)
        "REMEDIATION_APPROVALS__REQUIRE": "[]",
        # the start-up doctor probes every endpoint and proxy once: tests counting requests
        # would see it (tests/doctor turn it back on)
        "REMEDIATION_DOCTOR__AT_START": "false",
    }
    env.update(extra)
    return env


def clean_environ() -> dict[str, str]:
    """This process's environment without any REMEDIATION_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATION_")}


def process_env(redis_server: RedisServer, audit_dsn: str, **extra: str) -> dict[str, str]:
    """The environment for a worker or CLI subprocess pointed at the test services."""
    return {**clean_environ(), **service_env(redis_server, audit_dsn, **extra)}
