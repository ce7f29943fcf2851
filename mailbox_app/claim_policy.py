"""Who may be claimed next across threads: fairness between owners and concurrency limits.

Within a thread the order is the reference's (priority, then created). Across threads, a worker that
finishes an attempt claims the head of the thread whose owner was served longest ago (round-robin by
owner, `mailbox_fair_group`), so one owner's backlog cannot delay every other owner's next run.

Limits count claimed dispatches in PostgreSQL at claim time: the claim transaction first takes a
transaction-scoped advisory lock per limited scope (global, the agent, the owner) and then claims with
the count in its condition, so two workers can never exceed a limit. Unlimited agents take no lock.
Lock order everywhere: the thread's epoch row, then the advisory locks in a fixed order.

Settings (environment):
  AWAKEN_FAIRNESS               `owner` (default) or `off` (a finished attempt drains its own thread)
  AWAKEN_MAX_ACTIVE_RUNS        global limit of executing dispatches (unset: none)
  AWAKEN_AGENT_LIMITS           JSON object {"agent_id": n}
  AWAKEN_OWNER_MAX_ACTIVE_RUNS  per-owner limit (unset: none)
  AWAKEN_UNSTARTED_CLAIM_GRACE_MS  how long a claim taken inline by a submit may wait for its worker
                                before a finishing worker takes it over (default 100)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailbox_app.config import ConfigError


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


DEFAULT_POLICY = ClaimPolicy()


def claim_policy() -> ClaimPolicy:
    policy = getattr(settings, "AWAKEN_CLAIM_POLICY", None)
    return policy if isinstance(policy, ClaimPolicy) else DEFAULT_POLICY
