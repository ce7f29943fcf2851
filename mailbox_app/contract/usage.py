"""What running an agent cost: tokens in and out and an optional cost, as an agent reports them for a
step or an attempt (`Usage`), and as a run keeps them per attempt (`AttemptUsage`).

An attempt's usage is what its agent reported on its `RunResult` plus what the steps it executed
reported (steps replayed from a journal were paid for by the attempt that recorded them). The run's
`input_tokens` / `output_tokens` / `cost` are the sums over its attempts; the token budget of an owner
or an agent is charged with `total_tokens` (docs/replay-and-budgets.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from mailbox_app.contract.message import FROZEN_MODEL


class Usage(BaseModel):
    """Tokens in, tokens out, and what they cost (in the agent's currency unit; None: not reported)."""

    model_config = FROZEN_MODEL
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost: float | None = Field(default=None, ge=0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def is_zero(self) -> bool:
        return self.input_tokens == 0 and self.output_tokens == 0 and self.cost is None

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost is None and other.cost is None else (self.cost or 0.0) + (other.cost or 0.0)
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost=cost,
        )

    @staticmethod
    def total(parts: Iterable[Usage | None]) -> Usage:
        out = ZERO
        for part in parts:
            if part is not None:
                out = out + part
        return out


ZERO = Usage()


class AttemptUsage(BaseModel):
    """One attempt's usage as the run keeps it: the dispatch and its attempt number (1 = its first)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    dispatch_id: str
    attempt: int = Field(ge=1)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost: float | None = Field(default=None, ge=0)
    # "finished": the attempt that wrote the run at its finish; "lost": an earlier attempt that ended
    # without a finish (a crash, a lost lease, a retried failure), known from the steps it recorded
    ended: str = "finished"
    recorded_at: int = 0

    @property
    def usage(self) -> Usage:
        return Usage(input_tokens=self.input_tokens, output_tokens=self.output_tokens, cost=self.cost)
