"""Backups on disk and tables to back up: synthetic dumps with signed manifests."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from remediation import backups
from tests.support.env import TEST_SIGNING_KEY

KEY = TEST_SIGNING_KEY.encode()


def fill(dsn: str, tables: dict[str, int]) -> None:
    """Create each table with an index and the given number of rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, rows in tables.items():
            ident = sql.Identifier("public", name)
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text)").format(ident))
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(1, %s) g"
                ).format(ident),
                (rows,),
            )


def write_backup(
    folder: Path, when: datetime, status: str = "unverified", key: bytes | None = KEY
) -> Path:
    """A synthetic dump and manifest; status is unverified, verified or failed; the manifest
    is signed with ``key`` (None: written without a mac)."""
    folder.mkdir(parents=True, exist_ok=True)
    dump = folder / backups.dump_name("app", when)
    dump.write_bytes(b"PGDMP")
    verification = None if status == "unverified" else {"ok": status == "verified"}
    if status == "failed":
        verification = {"ok": False, "failed_step": "restore", "message": "boom"}
    manifest = {"file": dump.name, "started_at": when.isoformat(), "verification": verification}
    if key is None:
        backups.write_json(backups.manifest_path(dump), manifest)
    else:
        backups.write_manifest(backups.manifest_path(dump), manifest, key)
    return dump
