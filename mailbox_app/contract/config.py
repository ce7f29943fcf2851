"""Mailbox configuration: the reference's `MailboxConfig`, read from `AWAKEN_MAILBOX_*` variables, and the
claim policy (`ClaimPolicy`: fairness and limits, applied by `claim_policy()` in mailbox_app/conf.py)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Literal

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


class ClaimPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    fairness: Literal["owner", "off"] = "owner"
    max_active_runs: int | None = Field(default=None, ge=1)
    agent_limits: dict[str, int] = Field(default_factory=dict)
    owner_max_active_runs: int | None = Field(default=None, ge=1)
    unstarted_claim_grace_ms: int = Field(default=100, ge=0)

    @property
    def fair(self) -> bool:
        return self.fairness == "owner"

    @property
    def has_limits(self) -> bool:
        return bool(self.max_active_runs or self.agent_limits or self.owner_max_active_runs)

    def agent_limit(self, agent_key: str) -> int | None:
        return self.agent_limits.get(agent_key)

    def lock_scopes(self, agent_key: str, owner_key: str) -> list[str]:
        """The advisory-lock names a claim of this agent for this owner must hold, in lock order."""
        scopes = []
        if self.max_active_runs is not None:
            scopes.append("global")
        if agent_key in self.agent_limits:
            scopes.append(f"agent:{agent_key}")
        if self.owner_max_active_runs is not None:
            scopes.append(f"owner:{owner_key}")
        return scopes

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ClaimPolicy:
        raw: dict[str, object] = {}
        names = {
            "fairness": "AWAKEN_FAIRNESS",
            "max_active_runs": "AWAKEN_MAX_ACTIVE_RUNS",
            "agent_limits": "AWAKEN_AGENT_LIMITS",
            "owner_max_active_runs": "AWAKEN_OWNER_MAX_ACTIVE_RUNS",
            "unstarted_claim_grace_ms": "AWAKEN_UNSTARTED_CLAIM_GRACE_MS",
        }
        for field, var in names.items():
            value = environ.get(var, "").strip()
            if not value:
                continue
            if field == "agent_limits":
                try:
                    raw[field] = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{var} is not JSON: {exc}") from None
            else:
                raw[field] = value
        try:
            policy = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = first.get("loc") or ("?",)
            raise ConfigError(f"{names.get(str(loc[0]), str(loc[0]))}: {first['msg']}") from None
        if any(n < 1 for n in policy.agent_limits.values()):
            raise ConfigError("AWAKEN_AGENT_LIMITS: every limit must be >= 1")
        return policy


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_ALLOWED_NETWORKS = "127.0.0.0/8,::1/128"


def parse_networks(name: str, raw: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (or single addresses); empty means none. A bad entry names the variable."""
    networks: list[Network] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {entry!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return tuple(networks)
