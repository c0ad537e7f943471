"""Every key the remediator keeps in Redis, in one place. All under the ``rem:`` namespace.

The guards' keys, and those of the domain modules (proxy pool, throttles and pauses, pool
sizes, container restarts, the beat schedule). The strings are stored state: changing one
orphans what a running deployment already keeps under the old name."""

from __future__ import annotations

PREFIX = "rem:"
PAUSE = PREFIX + "pause"
BREAKER_INDEX = PREFIX + "breakers"
PROXY = PREFIX + "proxy:"
"""Prefix of the proxy pool's keys (remediation.proxies)."""
THROTTLE_INDEX = PREFIX + "throttles"
"""Set of integrations throttled by throttle_sync, on the rate-limit target's Redis."""
PAUSED_QUEUE_INDEX = PREFIX + "paused_queues"
"""Set of Celery queues paused by pause_low_priority, on the state Redis."""
RESTART = PREFIX + "restart:"
"""Prefix of restart_container's per-container hash (remediation.restarts)."""
REDBEAT = PREFIX + "redbeat:"
"""celery-redbeat's key prefix for the beat schedule."""
BAN = PREFIX + "ban:"
"""Prefix of the client blocklist applications read (remediation.security.bans, README)."""
ACCESS = PREFIX + "access:"
"""Prefix of access_log_clients' window state (remediation.security.access_logs)."""


def breaker(name: str) -> str:
    return f"{PREFIX}breaker:{name}"


def breaker_calls(name: str) -> str:
    return f"{PREFIX}breaker:{name}:calls"


def breaker_failures(name: str) -> str:
    return f"{PREFIX}breaker:{name}:failures"


def breaker_permits(name: str) -> str:
    return f"{PREFIX}breaker:{name}:permits"


def lock(action: str, resource: str) -> str:
    return f"{PREFIX}lock:{action}:{resource}"


def cooldown(action: str, resource: str) -> str:
    return f"{PREFIX}cooldown:{action}:{resource}"


def budget(action: str) -> str:
    return f"{PREFIX}budget:{action}"


def idempotency(key: str) -> str:
    return f"{PREFIX}idem:{key}"


def incident(fingerprint: str) -> str:
    return f"{PREFIX}incident:{fingerprint}"


def notified(incident_id: str, kind: str) -> str:
    return f"{PREFIX}notified:{incident_id}:{kind}"


def flap(action: str, resource: str) -> str:
    return f"{PREFIX}flap:{action}:{resource}"


def flap_suspended(action: str, resource: str) -> str:
    return f"{PREFIX}flapped:{action}:{resource}"


def blast(action: str) -> str:
    return f"{PREFIX}blast:{action}"


def streak(check: str, target: str) -> str:
    return f"{PREFIX}streak:{check}:{target}"


def notice(kind: str, action: str) -> str:
    """Set while a notice of this kind about this action was sent in the current window
    (refusals and unresolvable calls page at most once per window, not once per call)."""
    return f"{PREFIX}notice:{kind}:{action}"


def scale(name: str) -> str:
    """Hash of a watched worker pool's scale-up/down times (remediation.celery_cluster)."""
    return f"{PREFIX}scale:{name}"


def throttle(integration: str) -> str:
    """Hash of a throttled integration's rate limits (remediation.throttles)."""
    return f"{PREFIX}throttle:{integration}"


def paused_queue(queue: str) -> str:
    """Hash of a paused Celery queue (remediation.throttles)."""
    return f"{PREFIX}paused_queue:{queue}"


API_KEY_ROTATIONS = PREFIX + "apikeys:rotated"
"""Hash: API key name -> epoch of its last rotation (rotate_api_key, `remediation keys
rotated`; remediation.security.api_keys)."""
LOG_LEVEL = PREFIX + "loglevel:"
"""Prefix of raise_log_level's records of raises in files (remediation.security.log_levels)."""


def alert_seen(fingerprint: str, starts_at: str) -> str:
    """Set once per Alertmanager alert occurrence (its fingerprint and startsAt): the intake's
    dedupe across retries, repeats and HA Alertmanager pairs (remediation.serve.intake)."""
    return f"{PREFIX}alert:{fingerprint}:{starts_at}"


def alert_firing(fingerprint: str) -> str:
    """Set while Alertmanager reports an alert firing (deleted when it posts it resolved):
    what the alertmanager_alert check reads to verify a fix by the alert resolving."""
    return f"{PREFIX}alert:firing:{fingerprint}"


APPROVALS_PENDING = PREFIX + "approvals:pending"
"""Sorted set: pending approval id -> its expiry (epoch) (remediation.approvals)."""
APPROVALS_RECENT = PREFIX + "approvals:recent"
"""Sorted set: approval id -> when it was requested, the newest APPROVALS_KEPT kept."""
APPROVALS_STATS = PREFIX + "approvals:stats"
"""Hash: counts of approval events and decision-time buckets, read at scrape time."""


def slot(entry: str, slot: int) -> str:
    """Set by the first check run of one beat entry's slot (remediation.slots): a second
    firing of the same slot (two beats both believing they hold the lock) runs nothing."""
    return f"{PREFIX}slot:{entry}:{slot}"


def slot_last(entry: str) -> str:
    """The latest slot of one beat entry that ran (remediation.tasks): a gap of more than one
    interval to the next is a count of missed slots, audited."""
    return f"{PREFIX}slot:last:{entry}"


def approval(approval_id: str) -> str:
    """Hash: one approval (what the call is, its plan, its state and who decided)."""
    return f"{PREFIX}approval:{approval_id}"


def approval_call(idempotency_key: str) -> str:
    """The approval asked for one call (action, resource, incident): one per call."""
    return f"{PREFIX}approval:call:{idempotency_key}"


def approvals_of(fingerprint: str) -> str:
    """Set: approvals asked for on a condition (withdrawn when it resolves)."""
    return f"{PREFIX}approvals:fp:{fingerprint}"


def watch_lease(source: str) -> str:
    """The lease of one event source (remediation.watch): the watcher id holding it. One
    watcher listens to a source at a time; a standby takes over once the lease expires."""
    return f"{PREFIX}watch:lease:{source}"


def watch_stats(source: str) -> str:
    """Hash: one event source's counters and holder, written by its active watcher about once
    a second (`remediation status`, the tests)."""
    return f"{PREFIX}watch:stats:{source}"


def recheck(check: str, params_digest: str, second: int) -> str:
    """Set by the first worker that scheduled a deferred fix's recheck for this second
    (remediation.rechecks): a deferral seen by several runs sends one recheck."""
    return f"{PREFIX}recheck:{check}:{params_digest}:{second}"


DOCTOR_LAST = PREFIX + "doctor:last"
"""JSON of the last doctor report a worker ran at start (remediation.doctor.at_start),
shown by `remediation status`; expires after DOCTOR_LAST_TTL seconds."""
DOCTOR_LAST_TTL = 7 * 86400
