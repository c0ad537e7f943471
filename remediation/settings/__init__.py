"""The one place configuration is read: environment variables prefixed REMEDIATION_.

Nested settings use ``__`` (``REMEDIATION_BREAKER__MINIMUM_CALLS=4``); mappings can be
given as JSON (``REMEDIATION_POSTGRES_TARGETS='{"app": "postgresql://..."}'``) or one
key at a time (``REMEDIATION_POSTGRES_TARGETS__APP=postgresql://...``). Anything that can
hold a password is a ``SecretStr``. ``.env.example`` lists every variable.

The sections live by area (core, guards, postgres, backups, traffic, workers, host); this
module holds the root ``Settings``, the loaders, and re-exports every section.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from remediation.errors import ConfigError, TargetError
from remediation.settings.access import AccessSettings
from remediation.settings.api_keys import ApiKeySettings
from remediation.settings.approvals import DEFAULT_REQUIRE, ApprovalSettings
from remediation.settings.backups import BackupSettings
from remediation.settings.base import ENV_PREFIX, MIN_SIGNING_KEY, NESTED
from remediation.settings.certificates import CertificateSettings
from remediation.settings.core import (
    AuditSettings,
    CelerySettings,
    MetricsSettings,
    NotifySettings,
    VerifySettings,
)
from remediation.settings.dependencies import DependencySettings
from remediation.settings.doctor import DoctorSettings
from remediation.settings.guards import (
    DEFAULT_BLAST_RADIUS,
    BlastCap,
    BreakerSettings,
    GuardSettings,
)
from remediation.settings.host import CacheSettings, HostSettings
from remediation.settings.images import ImageSettings
from remediation.settings.log_secrets import LogSecretsSettings
from remediation.settings.monitoring import MonitoringSettings
from remediation.settings.postgres import (
    DEFAULT_DATA_QUALITY,
    DataQualityRule,
    FreshnessRule,
    PostgresSettings,
)
from remediation.settings.retention import RetentionSettings
from remediation.settings.serve import AlertRule, AlertSettings, LabelOrFixed, ServeSettings
from remediation.settings.traffic import (
    DEFAULT_PROMETHEUS_RULES,
    DESKTOP_OS,
    HEADER_BROWSERS,
    BackoffSettings,
    HeaderBrowser,
    HeaderOs,
    HeadersSettings,
    HttpEndpoint,
    HttpSettings,
    PrometheusRule,
    PrometheusSettings,
    ProxySettings,
    RateLimitEndpoint,
    RateLimitSettings,
)
from remediation.settings.watch import WatchSettings
from remediation.settings.workers import (
    ContainerSettings,
    JobQueueSettings,
    ScaleTarget,
    WorkersSettings,
)

__all__ = [
    "DEFAULT_BLAST_RADIUS",
    "DEFAULT_DATA_QUALITY",
    "DEFAULT_PROMETHEUS_RULES",
    "DEFAULT_REQUIRE",
    "DESKTOP_OS",
    "ENV_PREFIX",
    "HEADER_BROWSERS",
    "MIN_SIGNING_KEY",
    "NESTED",
    "AccessSettings",
    "AlertRule",
    "AlertSettings",
    "ApiKeySettings",
    "ApprovalSettings",
    "AuditSettings",
    "BackoffSettings",
    "BackupSettings",
    "BlastCap",
    "BreakerSettings",
    "CacheSettings",
    "CelerySettings",
    "CertificateSettings",
    "ContainerSettings",
    "DataQualityRule",
    "DependencySettings",
    "DoctorSettings",
    "FreshnessRule",
    "GuardSettings",
    "HeaderBrowser",
    "HeaderOs",
    "HeadersSettings",
    "HostSettings",
    "HttpEndpoint",
    "HttpSettings",
    "ImageSettings",
    "JobQueueSettings",
    "LabelOrFixed",
    "LogSecretsSettings",
    "MetricsSettings",
    "MonitoringSettings",
    "NotifySettings",
    "PostgresSettings",
    "PrometheusRule",
    "PrometheusSettings",
    "ProxySettings",
    "RateLimitEndpoint",
    "RateLimitSettings",
    "ScaleTarget",
    "ServeSettings",
    "Settings",
    "VerifySettings",
    "WatchSettings",
    "WorkersSettings",
    "env_name",
    "env_names",
    "get_settings",
    "load_settings",
]

# Variables the test-suite and set-up scripts use; they are not settings.
_NOT_SETTINGS = ("REMEDIATION_TEST_", "REMEDIATION_BENCH_", "REMEDIATION_CHAOS_")


class Settings(BaseSettings):
    """Everything the worker, beat and CLI read. Validated once, at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED,
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/1")
    result_backend: SecretStr = SecretStr("redis://127.0.0.1:6379/2")
    state_redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    audit_dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/remediation")
    signing_key: SecretStr | None = Field(
        None, description="HMAC key for trigger headers and backup manifests (32+ characters)"
    )
    postgres_targets: dict[str, SecretStr] = Field(default_factory=dict)
    redis_targets: dict[str, SecretStr] = Field(default_factory=dict)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    schedule_module: str = Field("beat_schedule", description="the Python module beat loads")
    breaker: BreakerSettings = BreakerSettings()
    guards: GuardSettings = GuardSettings()
    audit: AuditSettings = AuditSettings()
    metrics: MetricsSettings = MetricsSettings()
    notify: NotifySettings = NotifySettings()
    job_queue: JobQueueSettings = JobQueueSettings()
    celery: CelerySettings = CelerySettings()
    verify: VerifySettings = VerifySettings()
    postgres: PostgresSettings = PostgresSettings()
    backup: BackupSettings = BackupSettings()
    proxies: ProxySettings = ProxySettings()
    backoff: BackoffSettings = BackoffSettings()
    headers: HeadersSettings = HeadersSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    http: HttpSettings = HttpSettings()
    workers: WorkersSettings = WorkersSettings()
    containers: ContainerSettings = ContainerSettings()
    cache: CacheSettings = CacheSettings()
    host: HostSettings = HostSettings()
    # security runbooks (issue 13)
    secrets: LogSecretsSettings = LogSecretsSettings()

    access: AccessSettings = AccessSettings()

    monitoring: MonitoringSettings = MonitoringSettings()

    api_keys: ApiKeySettings = ApiKeySettings()

    dependencies: DependencySettings = DependencySettings()

    certificates: CertificateSettings = CertificateSettings()

    images: ImageSettings = ImageSettings()

    # alerts in (issue 14)
    serve: ServeSettings = ServeSettings()
    alerts: AlertSettings = AlertSettings()
    approvals: ApprovalSettings = ApprovalSettings()
    # audit retention (issue 15)
    retention: RetentionSettings = RetentionSettings()
    # event sources (issue 16)
    watch: WatchSettings = WatchSettings()
    # remediation doctor (issue 17)
    doctor: DoctorSettings = DoctorSettings()

    @field_validator("broker_url", "result_backend", "state_redis_url")
    @classmethod
    def _redis_or_amqp(cls, value: SecretStr) -> SecretStr:
        scheme = value.get_secret_value().split("://", 1)[0]
        if scheme not in {"redis", "rediss", "amqp", "amqps", "pyamqp", "unix"}:
            raise ValueError(f"unsupported URL scheme {scheme!r}")
        return value

    @field_validator("signing_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SIGNING_KEY:
            raise ValueError(
                f"must be at least {MIN_SIGNING_KEY} characters (make run creates one)"
            )
        return value

    @field_validator("audit_dsn")
    @classmethod
    def _postgres_dsn(cls, value: SecretStr) -> SecretStr:
        _require_postgres(value)
        return value

    @field_validator("postgres_targets")
    @classmethod
    def _postgres_targets(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for dsn in value.values():
            _require_postgres(dsn)
        return value

    def postgres_dsn(self, target: str) -> str:
        """The DSN of a monitored database; "self" is the audit database by default."""
        return _lookup(self.postgres_targets, target, "POSTGRES_TARGETS", self.audit_dsn)

    def redis_url(self, target: str) -> str:
        """The URL of a monitored Redis; "self" is the state Redis by default."""
        return _lookup(self.redis_targets, target, "REDIS_TARGETS", self.state_redis_url)

    def postgres_target(self, target: str) -> str:
        """The configured name of a PostgreSQL target, spelled as configured ("APP" -> "app");
        TargetError when none matches."""
        return _canonical(self.postgres_targets, target, "POSTGRES_TARGETS")

    def redis_target(self, target: str) -> str:
        """The configured name of a Redis target, spelled as configured; TargetError if none."""
        return _canonical(self.redis_targets, target, "REDIS_TARGETS")


def _require_postgres(value: SecretStr) -> None:
    dsn = value.get_secret_value()
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL")


def _canonical(table: dict[str, SecretStr], target: str, var: str) -> str:
    """Target names match case-insensitively and resolve to the configured spelling; "self"
    (any case) is always known."""
    for name in table:
        if name.lower() == target.lower():
            return name
    if target.lower() == "self":
        return "self"
    known = ", ".join(sorted(set(table) | {"self"}))
    raise TargetError(f"target {target!r} is not configured in {ENV_PREFIX}{var} (known: {known})")


def _lookup(table: dict[str, SecretStr], target: str, var: str, self_default: SecretStr) -> str:
    name = _canonical(table, target, var)
    return (table[name] if name in table else self_default).get_secret_value()


def env_name(loc: tuple[Any, ...]) -> str:
    """The environment variable a validation error location refers to."""
    return ENV_PREFIX + NESTED.join(str(part).upper() for part in loc)


def _unknown_variables(fields: set[str]) -> list[str]:
    unknown = []
    for name in os.environ:
        if not name.startswith(ENV_PREFIX) or name.startswith(_NOT_SETTINGS):
            continue
        top = name[len(ENV_PREFIX) :].split(NESTED, 1)[0].lower()
        if top not in fields:
            unknown.append(name)
    return sorted(unknown)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise ConfigError naming the variable on any problem."""
    unknown = _unknown_variables(set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a known setting (see .env.example)")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{env_name(first['loc'])}: {first['msg']}") from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    return load_settings()


def env_names() -> list[str]:
    """Every variable the settings read: what .env.example must list."""
    names = []
    for name, info in Settings.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += [env_name((name, sub)) for sub in ann.model_fields]
        else:
            names.append(env_name((name,)))
    return names
