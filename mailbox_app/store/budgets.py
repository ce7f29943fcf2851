"""Token budgets in PostgreSQL: what the claims are told (`budget_param`), what holds a head back (the
why-blocked view's `blocking_budget`), the windows' usage (the admin), and the GC of ended windows.

Admission itself is budgets.sql's (beside this module), called inside the claim statements: a claim is
one statement with budgets as without. Nothing here runs on a claim's path but `budget_param`, which
reads settings only (no query), and answers None when `AWAKEN_TOKEN_BUDGETS` is unset: then the claims
take exactly the path they took before budgets existed.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.utils.module_loading import import_string

from mailbox_app.agents.registry import configured_agents
from mailbox_app.conf import token_budgets
from mailbox_app.contract.timefmt import format_duration_ms


@functools.lru_cache(maxsize=256)
def declared_max_tokens(path: str) -> int | None:
    """An agent's declared `max_tokens` (a class attribute of its executor): what a claim of it reserves."""
    try:
        value = getattr(import_string(path), "max_tokens", None)
    except ImportError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def agent_reserves() -> dict[str, int]:
    """The reservation of every configured agent that declares `max_tokens`."""
    return {
        agent: declared
        for agent, path in configured_agents().items()
        if (declared := declared_max_tokens(path)) is not None
    }


def budget_param() -> str | None:
    """The claims' `p_budgets` (JSON text), or None when budgets are not configured."""
    budgets = token_budgets()
    if not budgets.enabled:
        return None
    return json.dumps(budgets.sql_param(agent_reserves()))


def budget_json() -> dict[str, Any] | None:
    """`budget_param` as a value, for the fused functions' JSON payloads."""
    budgets = token_budgets()
    return budgets.sql_param(agent_reserves()) if budgets.enabled else None


# --- what holds a head back --------------------------------------------------------------------------

# The budgets of this owner and agent (the admin's row, else the setting's default) and the usage of the
# window open at `now`, for each: the admission's arithmetic, read without its locks.
WINDOW_STATE = """
SELECT s.scope, s.key, s.tokens, s.window_ms, s.window_start,
       COALESCE((SELECT sum(c.tokens) FROM mailbox_token_charge c
                  WHERE c.scope = s.scope AND c.key = s.key AND c.window_start = s.window_start), 0) AS used
  FROM (SELECT b.scope, b.key, b.tokens, b.window_ms, %(now)s - %(now)s %% b.window_ms AS window_start
          FROM mailbox_budget_scopes(%(budgets)s::jsonb, %(owner_key)s, %(agent_key)s) AS b) AS s
"""


@dataclass(frozen=True, slots=True)
class WindowState:
    scope: str  # "owner" | "agent"
    key: str
    tokens: int  # the budget per window
    window_ms: int
    window_start: int
    used: int  # charged in the open window (reservations of unfinished attempts included)

    @property
    def spent(self) -> bool:
        return self.used >= self.tokens

    def resets_in_ms(self, now: int) -> int:
        return max(self.window_start + self.window_ms - now, 0)

    def reason(self, now: int) -> str:
        """`token budget of owner 7: resets in 42 s (used 200311 of 200000 tokens in this 1 min window)`."""
        return (
            f"token budget of {self.scope} {self.key or '(none)'}: resets in "
            f"{max((self.resets_in_ms(now) + 999) // 1000, 1)} s (used {self.used} of {self.tokens} tokens "
            f"in this {format_duration_ms(self.window_ms)} window)"
        )


def window_states(owner_key: str, agent_key: str, now: int) -> list[WindowState]:
    """The budgets that apply to a head of this owner and agent, with their open windows' usage."""
    param = budget_param()
    if param is None:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            WINDOW_STATE, {"budgets": param, "owner_key": owner_key, "agent_key": agent_key, "now": now}
        )
        rows = cursor.fetchall()
    return [WindowState(str(s), str(k), int(t), int(w), int(ws), int(u)) for s, k, t, w, ws, u in rows]


def blocking_budget(owner_key: str, agent_key: str, now: int) -> WindowState | None:
    """The spent window that holds a claim of this agent for this owner now (the agent's first, as the
    admission checks it); None when budgets are off or none is spent."""
    return next((state for state in window_states(owner_key, agent_key, now) if state.spent), None)


# --- the admin's reads -------------------------------------------------------------------------------

# Every scope with charges in a window open at `now`: its usage there, its reservations still open.
OPEN_WINDOWS = """
SELECT c.scope, c.key, c.window_start, max(c.window_end), sum(c.tokens),
       count(*) FILTER (WHERE c.settled_at IS NULL), sum(c.tokens) FILTER (WHERE c.settled_at IS NULL)
  FROM mailbox_token_charge c
 WHERE c.window_end > %(now)s AND c.window_start <= %(now)s
 GROUP BY c.scope, c.key, c.window_start
 ORDER BY sum(c.tokens) DESC, c.scope, c.key
 LIMIT %(limit)s
"""


@dataclass(frozen=True, slots=True)
class OpenWindow:
    scope: str
    key: str
    window_start: int
    window_end: int
    used: int
    open_reservations: int  # claims whose attempt has not finished: their estimate is what counts
    reserved_tokens: int


def open_windows(now: int, limit: int = 200) -> list[OpenWindow]:
    """The windows open now with their usage, most used first (the admin's budget page)."""
    with connection.cursor() as cursor:
        cursor.execute(OPEN_WINDOWS, {"now": now, "limit": limit})
        rows = cursor.fetchall()
    return [
        OpenWindow(str(s), str(k), int(ws), int(we), int(u), int(n), int(r or 0))
        for s, k, ws, we, u, n, r in rows
    ]


# --- the GC ------------------------------------------------------------------------------------------

PURGE_CHARGES = """
DELETE FROM mailbox_token_charge
 WHERE id IN (SELECT id FROM mailbox_token_charge WHERE window_end < %(now)s LIMIT %(limit)s)
"""


def purge_charges(now: int, limit: int) -> int:
    """Delete up to `limit` charges of windows that have ended (no admission reads them again)."""
    with connection.cursor() as cursor:
        cursor.execute(PURGE_CHARGES, {"now": now, "limit": limit})
        return int(cursor.rowcount)
