"""One decision per suspended tool call: the rows of runs_app's `runs_decision`, unique per (run, tool
call), which make a decision happen exactly once.

A decision is claimed here before it reaches the run: in the transaction that queues the run's resume
(a run waiting durably), or committed before it is delivered live (a run suspended in a worker, which
acknowledges whatever it is sent). A second decision for the same call, concurrent or later, inserts
nothing (its insert waits for the first one's transaction, then finds its row) and is `AlreadyDecided`.
The claim is also where the caller's ownership is checked: the row is written only for a run whose
thread is the owner's, in the statement that writes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection

from mailbox_app.contract.suspension import ToolCallResume

LIVE = "live"
QUEUED = "queued"


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision already taken for a tool call (what a second one is told)."""

    run_id: str
    tool_call_id: str
    decision_id: str
    action: str
    via: str
    dispatch_id: str | None
    decided_at: int


class AlreadyDecided(Exception):
    """A tool call that has its decision already; nothing of this request was written."""

    def __init__(self, decided: Decided) -> None:
        super().__init__(
            f"tool call {decided.tool_call_id} of run {decided.run_id} is already decided ({decided.action})"
        )
        self.decided = decided


# One row per decision, for a run whose thread is the owner's (any owner when none is given); a call
# decided before keeps its row and yields nothing here.
CLAIM = """
INSERT INTO runs_decision (run_id, tool_call_id, decision_id, action, via, decided_at)
SELECT r.run_id, x.d ->> 'tool_call_id', x.d ->> 'decision_id', x.d ->> 'action', %(via)s, %(now)s
  FROM runs_run r
  JOIN runs_thread t ON t.id = r.thread_id
 CROSS JOIN jsonb_array_elements(%(decisions)s::jsonb) WITH ORDINALITY AS x(d, ord)
 WHERE r.run_id = %(run_id)s AND (%(owner_id)s::integer IS NULL OR t.owner_id = %(owner_id)s::integer)
 ORDER BY x.ord
ON CONFLICT (run_id, tool_call_id) DO NOTHING
RETURNING tool_call_id
"""

# Scoped like the claim: another owner's run has no decisions to tell about.
DECIDED = """
SELECT d.run_id, d.tool_call_id, d.decision_id, d.action, d.via, d.dispatch_id, d.decided_at
  FROM runs_decision d
  JOIN runs_run r ON r.run_id = d.run_id
  JOIN runs_thread t ON t.id = r.thread_id
 WHERE d.run_id = %(run_id)s AND d.tool_call_id = ANY(%(calls)s)
   AND (%(owner_id)s::integer IS NULL OR t.owner_id = %(owner_id)s::integer)
 ORDER BY d.id
"""


def claim(
    run_id: str,
    decisions: Sequence[tuple[str, ToolCallResume]],
    *,
    owner_id: int | None,
    via: str,
    now: int,
) -> bool:
    """Claim each decision's tool call for this run, inside the caller's transaction. True when every
    one was claimed; False when the run is unknown or not the owner's (nothing written); raises
    `AlreadyDecided` when a call has its decision already (the caller's transaction must then roll back:
    the calls claimed before it in the same statement are part of it)."""
    payload = [
        {"tool_call_id": call, "decision_id": resume.decision_id, "action": resume.action}
        for call, resume in decisions
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            CLAIM,
            {
                "run_id": run_id,
                "owner_id": owner_id,
                "via": via,
                "now": now,
                "decisions": json.dumps(payload),
            },
        )
        claimed = {row[0] for row in cursor.fetchall()}
    if len(claimed) == len(payload):
        return True
    calls = [call for call, _ in decisions]
    taken = [d for d in decided(run_id, calls, owner_id=owner_id) if d.tool_call_id not in claimed]
    if taken:
        raise AlreadyDecided(taken[0])
    return False  # no row at all: the run is not there for this owner


def decided(run_id: str, tool_call_ids: Sequence[str], *, owner_id: int | None = None) -> list[Decided]:
    """The decisions taken for these tool calls of the run (of the owner's run, when one is given)."""
    with connection.cursor() as cursor:
        cursor.execute(DECIDED, {"run_id": run_id, "calls": list(tool_call_ids), "owner_id": owner_id})
        return [Decided(*row) for row in cursor.fetchall()]


# The claimed decisions now travel in a resume dispatch (a live delivery that was not acknowledged, or a
# durable decision): the row names it.
QUEUE = """
UPDATE runs_decision SET via = 'queued', dispatch_id = %(dispatch_id)s
 WHERE run_id = %(run_id)s AND decision_id = ANY(%(decision_ids)s) AND tool_call_id = ANY(%(calls)s)
"""


def queued(run_id: str, decisions: Sequence[tuple[str, ToolCallResume]], dispatch_id: str) -> None:
    """Name the resume dispatch that carries these claimed decisions (in its transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(QUEUE, _keys(run_id, decisions) | {"dispatch_id": dispatch_id})


# A claim given back: its decisions reached no run (the live run ended without taking them and is not
# waiting for them), so a later decision of the same call may be taken.
RELEASE = """
DELETE FROM runs_decision
 WHERE run_id = %(run_id)s AND decision_id = ANY(%(decision_ids)s) AND tool_call_id = ANY(%(calls)s)
   AND dispatch_id IS NULL
"""


def release(run_id: str, decisions: Sequence[tuple[str, ToolCallResume]]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(RELEASE, _keys(run_id, decisions))


def _keys(run_id: str, decisions: Sequence[tuple[str, ToolCallResume]]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "calls": [call for call, _ in decisions],
        "decision_ids": [resume.decision_id for _, resume in decisions],
    }
