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
