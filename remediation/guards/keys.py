"""Every Redis key the guards use, in one place. All under the ``rem:`` namespace."""

from __future__ import annotations

PREFIX = "rem:"
PAUSE = PREFIX + "pause"
BREAKER_INDEX = PREFIX + "breakers"


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
