"""Mailbox configuration: the reference's `MailboxConfig`, read from `AWAKEN_MAILBOX_*` variables."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_PREFIX = "AWAKEN_MAILBOX_"


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the environment variable."""


class MailboxConfig(BaseModel):
    """Lease, sweep, GC and retry settings; defaults equal the reference's `MailboxConfig::default()`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lease_ms: int = Field(default=30_000, gt=0)
    suspended_lease_ms: int = Field(default=600_000, gt=0)
    lease_renewal_interval_ms: int = Field(default=10_000, gt=0)
    sweep_interval_ms: int = Field(default=30_000, gt=0)
    gc_interval_ms: int = Field(default=60_000, gt=0)
    gc_ttl_ms: int = Field(default=86_400_000, gt=0)
    default_max_attempts: int = Field(default=5, ge=1)
    default_retry_delay_ms: int = Field(default=250, gt=0)
    max_retry_delay_ms: int = Field(default=30_000, gt=0)

    @model_validator(mode="after")
    def _renewal_shorter_than_lease(self) -> MailboxConfig:
        if self.lease_renewal_interval_ms >= self.lease_ms:
            raise ValueError(
                f"{ENV_PREFIX}LEASE_RENEWAL_INTERVAL_MS ({self.lease_renewal_interval_ms}) must be "
                f"shorter than {ENV_PREFIX}LEASE_MS ({self.lease_ms})"
            )
        if self.max_retry_delay_ms < self.default_retry_delay_ms:
            raise ValueError(f"{ENV_PREFIX}MAX_RETRY_DELAY_MS must be >= {ENV_PREFIX}DEFAULT_RETRY_DELAY_MS")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MailboxConfig:
        """Build from `AWAKEN_MAILBOX_<FIELD>` variables; raise `ConfigError` naming the bad variable."""
        raw: dict[str, str] = {}
        for name in cls.model_fields:
            value = environ.get(ENV_PREFIX + name.upper())
            if value is not None and value.strip() != "":
                raw[name] = value.strip()
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = first.get("loc") or ()
            if loc:
                var = ENV_PREFIX + str(loc[0]).upper()
                raise ConfigError(f"{var}={raw.get(str(loc[0]))!r}: {first['msg']}") from None
            raise ConfigError(str(first["msg"]).removeprefix("Value error, ")) from None
