"""Token budgets: how many tokens (input + output) the runs of one owner, or of one agent, may use per
window (`AWAKEN_TOKEN_BUDGETS`, overridden per owner or agent by rows the admin edits). The claims
admit a run only while its window has tokens left and reserve an estimate for it; its finish replaces
the reservation with what it used (mailbox_app/store/budgets.sql, docs/replay-and-budgets.md)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_WINDOW_S = 31 * 24 * 3600
ENV_NAME = "AWAKEN_TOKEN_BUDGETS"
FORM = '{"owner": {"tokens": N, "window_s": S}, "agent": {"tokens": N, "window_s": S}, "reserve_tokens": N}'


class BudgetConfigError(ValueError):
    """`AWAKEN_TOKEN_BUDGETS` is unusable; the message says why (without the variable's name)."""


class WindowBudget(BaseModel):
    """`tokens` per `window_s` seconds. Windows are fixed (aligned to the Unix epoch), so every process
    and the database agree where one ends without a clock of their own."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tokens: int = Field(ge=0)
    window_s: int = Field(default=60, ge=1, le=MAX_WINDOW_S)

    @property
    def window_ms(self) -> int:
        return self.window_s * 1000


class TokenBudgets(BaseModel):
    """The parsed setting. `enabled` is False when the variable is unset: then no claim reads a budget
    (not even the admin's rows), and the claims cost what they did before budgets existed. `owner` and
    `agent` are the defaults every owner / agent gets unless a row overrides them (None: unlimited).
    `reserve_tokens` is what a claim reserves for an agent that does not declare `max_tokens`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = False
    owner: WindowBudget | None = None
    agent: WindowBudget | None = None
    reserve_tokens: int = Field(default=4096, ge=0)

    @classmethod
    def parse(cls, raw: str) -> TokenBudgets:
        """From the variable's text: empty means disabled; otherwise a JSON object (`FORM`)."""
        if not raw.strip():
            return cls()
        try:
            data: Any = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BudgetConfigError(f"not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise BudgetConfigError("not a JSON object")
        if "enabled" in data:
            raise BudgetConfigError("'enabled' is not a key (setting the variable enables budgets)")
        try:
            return cls.model_validate({**data, "enabled": True})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc") or ())
            raise BudgetConfigError(f"{where}: {first['msg']}") from None

    def sql_param(self, reserve: dict[str, int]) -> dict[str, Any]:
        """The budgets as the claim functions read them (budgets.sql): the defaults in milliseconds and
        the reservation of each agent that declares one (`reserve`), else `default_reserve`."""
        return {
            "owner": None
            if self.owner is None
            else {"tokens": self.owner.tokens, "window_ms": self.owner.window_ms},
            "agent": None
            if self.agent is None
            else {"tokens": self.agent.tokens, "window_ms": self.agent.window_ms},
            "reserve": reserve,
            "default_reserve": self.reserve_tokens,
        }
