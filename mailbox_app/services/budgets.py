"""Token budgets for the people who set them: what applies to an owner or an agent now, how much of its
window is used and when it resets, the windows open now (the admin's budget page, docs/
replay-and-budgets.md). Reads only: the admission itself is the claims' (mailbox_app/store/budgets.sql)."""

from __future__ import annotations

from dataclasses import dataclass

from mailbox_app.conf import token_budgets
from mailbox_app.contract.budgets import TokenBudgets
from mailbox_app.contract.ids import now_ms
from mailbox_app.store import budgets as budget_store
from mailbox_app.store.budgets import OpenWindow, WindowState

__all__ = ["BudgetStatus", "OpenWindow", "WindowState", "configured", "open_windows", "status_of"]


def configured() -> TokenBudgets:
    """The setting (`AWAKEN_TOKEN_BUDGETS`): whether budgets are on, and the defaults of each scope."""
    return token_budgets()


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One scope's budget now: None when no budget applies to it (or budgets are off)."""

    state: WindowState | None
    now: int

    @property
    def text(self) -> str:
        if self.state is None:
            return (
                "no budget applies"
                if configured().enabled
                else "budgets are off (AWAKEN_TOKEN_BUDGETS unset)"
            )
        state = self.state
        left = max(state.tokens - state.used, 0)
        resets = max((state.resets_in_ms(self.now) + 999) // 1000, 1)
        verdict = "spent: new runs wait" if state.spent else f"{left} left"
        return f"{state.used} of {state.tokens} used ({verdict}); resets in {resets} s"


def status_of(scope: str, key: str, now: int | None = None) -> BudgetStatus:
    """The budget of the owner (`scope` "owner", key: the user's id) or the agent (`scope` "agent")."""
    stamp = now_ms() if now is None else now
    owner, agent = (key, "") if scope == "owner" else ("", key)  # the other scope is read and dropped
    states = budget_store.window_states(owner, agent, stamp)
    return BudgetStatus(next((s for s in states if s.scope == scope), None), stamp)


def open_windows(now: int | None = None, limit: int = 200) -> list[OpenWindow]:
    """The windows open now, most used first."""
    return budget_store.open_windows(now_ms() if now is None else now, limit)
