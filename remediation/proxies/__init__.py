"""The proxy pool in Redis (runbook 000 "Rotate Proxies", runbook 001 "Proxy Pool Maintenance").

Configured entries (REMEDIATION_PROXIES__PROXY_LIST, REMEDIATION_PROXIES__FILE) read
``URL [REGION]``. Keys, all in the Redis target that holds the pool:

* ``rem:proxy:index``: SET of proxy ids (12 hex of sha1 of scheme://user@host:port, never
  the password);
* ``rem:proxy:p:<id>``: HASH per proxy (``new_proxy_fields``, ``result_fields``);
* REMEDIATION_PROXIES__ACTIVE_KEY (``proxies:active``): SET of the active proxies' URLs,
  credentials included, which scrapers read. It is replaced whole inside MULTI (built
  under ``<key>:publishing`` and RENAMEd), so a reader sees the old set or the new one;
* ``rem:proxy:ban_rate``, ``rem:proxy:last_ban_at``, ``rem:proxy:last_test``: the
  latest test's ban rate, the epoch time of the last ban seen, and the test's counts.

Every change to the pool goes through ``ProxyPool.update``: read under WATCH, plan,
write and republish in one MULTI, re-planned when another writer got in between.

The package: ``entries`` (configured proxies, their ids and display URLs) and ``pool`` (the
pool in Redis: keys, records, updates). Every name is re-exported: ``proxies.X`` works.
"""

from __future__ import annotations

from remediation.proxies.entries import (
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    SCHEMES,
    Loaded,
    ProxyEntry,
    display_url,
    load_entries,
    parse_entry,
    proxy_id,
)
from remediation.proxies.pool import (
    ACTIVE,
    BAN_RATE_KEY,
    BANNED,
    DEAD,
    FAILING,
    HEALTHY,
    INDEX_KEY,
    LAST_BAN_AT_KEY,
    LAST_TEST_KEY,
    OK,
    PREFIX,
    QUARANTINED,
    SLOW,
    UNTESTED,
    UPDATE_ATTEMPTS,
    Changes,
    ProbeResult,
    ProxyPool,
    ProxyPoolBusy,
    ProxyRecord,
    Sync,
    new_proxy_fields,
    result_fields,
)

__all__ = [
    "ACTIVE",
    "BANNED",
    "BAN_RATE_KEY",
    "DEAD",
    "FAILING",
    "HEALTHY",
    "INDEX_KEY",
    "LAST_BAN_AT_KEY",
    "LAST_TEST_KEY",
    "MAX_ENTRIES",
    "MAX_FILE_BYTES",
    "OK",
    "PREFIX",
    "QUARANTINED",
    "SCHEMES",
    "SLOW",
    "UNTESTED",
    "UPDATE_ATTEMPTS",
    "Changes",
    "Loaded",
    "ProbeResult",
    "ProxyEntry",
    "ProxyPool",
    "ProxyPoolBusy",
    "ProxyRecord",
    "Sync",
    "display_url",
    "load_entries",
    "new_proxy_fields",
    "parse_entry",
    "proxy_id",
    "result_fields",
]
