"""A private PostgreSQL cluster per module that tests may stop and start, and a fresh audit
database on it per test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from remediation.audit import store as store_module
from remediation.audit.store import AuditStore
from remediation.testing import as_url, scratch_database
from tests.audit.cluster import Cluster, cluster_fixture  # noqa: F401 (the fixture)


@pytest.fixture
def db(cluster: Cluster) -> Iterator[str]:
    """An empty audit database (schema applied) on the private cluster, dropped afterwards."""
    if not cluster.answers():
        cluster.start()
    with scratch_database(cluster.dsn, "rem_spool") as dsn:
        AuditStore(dsn).upgrade()
        try:
            yield as_url(dsn)
        finally:
            store_module.close_pools()
            if not cluster.answers():  # a failed test may leave it stopped: drop needs it up
                cluster.start()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@contextmanager
def outage(cluster: Cluster) -> Iterator[None]:
    """PostgreSQL crash-stopped inside the block, started again (and answering) after it."""
    cluster.stop()
    try:
        yield
    finally:
        cluster.start()


def past_down_window() -> None:
    """Let the store try PostgreSQL again (it spools without trying for DOWN_SECONDS)."""
    time.sleep(store_module.DOWN_SECONDS + 0.1)
