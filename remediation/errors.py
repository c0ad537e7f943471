"""One exception tree for the whole package."""

from __future__ import annotations


class RemediationError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RemediationError):
    """Configuration is invalid; the message names the environment variable."""


class ScheduleError(ConfigError):
    """An entry in beat_schedule.py is invalid (unknown task, bad crontab, bad kwargs)."""


class RegistryError(RemediationError):
    """A check or action was declared wrongly, or a name is unknown."""


class UnknownTaskError(RegistryError):
    """No check or action is registered under this name."""


class ParamsError(RemediationError):
    """Task kwargs failed validation; nothing was run."""


class TargetError(RemediationError):
    """A target name is not configured."""


class GuardUnavailable(RemediationError):
    """Guard state (Redis) could not be read or written: never act without it."""


class AuditError(RemediationError):
    """The audit store could not be written."""


class ActionFailed(RemediationError):
    """An action ran and did not achieve its effect."""


class Refused(RemediationError):
    """An action call names nothing the configuration allows, names something that does not
    exist, or has nothing to do. Audited as refused; costs the guards nothing (no budget,
    no blast-radius units, no breaker failure, no flap count) and is not a failure page.
    ``notice`` False: a refusal nobody needs to hear about (a container already running)."""

    def __init__(self, reason: str, *, notice: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notice = notice


class Deferred(RemediationError):
    """An action declines to act now because of its own back-off or pacing. Audited as
    deferred (with when it may act); the incident stays open and a later sweep acts."""

    def __init__(self, reason: str, retry_at: float | None = None, guard: str = "backoff") -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_at = retry_at
        self.guard = guard


class TriggerError(RemediationError):
    """A trigger header is missing a part, malformed, expired or not signed with our key."""
