"""A private PostgreSQL cluster per module that tests may stop and start, and a fresh audit
database on it per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from remediation.audit import store as store_module
from remediation.audit.store import AuditStore
from tests.support.pg_cluster import Cluster
from tests.support.services import as_url, scratch_database


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
