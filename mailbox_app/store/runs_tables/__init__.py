"""Every statement of mailbox_app that names a table of runs_app (the built-in run store): the step
journal of a run (`steps.py`, in `runs_step`), the one decision of each suspended tool call
(`decisions.py`, in `runs_decision`) and the fused transitions — a submit (`submit.py`) and an
attempt's start and finish (`attempt.py`), each one statement, a PL/pgSQL function in the `.sql` file
beside its caller (installed by `migrate`, mailbox_app/store/install.py).

The mailbox drives the run store through its port (mailbox_app/store/ports.py). When that store is the
built-in one, in the same database, a transition may write its rows directly, and does: what the port
path does in several statements and transactions, the fused path does in one round trip. A host that
names another run store (`AWAKEN_RUN_STORE`) keeps the port path; so does a claim under concurrency
limits, whose advisory locks per scope live in mailbox_app/store/claims.py. docs/design/fused-transitions.md
says why.
"""

from __future__ import annotations

from typing import Any

from mailbox_app.conf import awaken_settings, claim_policy
from mailbox_app.contract.message import ChatMessage

BUILTIN_RUN_STORE = "runs_app.store"


def builtin_store() -> bool:
    """Whether the run store is runs_app's, in this database: an attempt's start may write its rows."""
    return awaken_settings.RUN_STORE == BUILTIN_RUN_STORE


def fused() -> bool:
    """Whether a submit and an attempt's finish may be one statement: the built-in store and no
    concurrency limit (their inline and next claims would need the limits' advisory locks)."""
    return builtin_store() and not claim_policy().has_limits


def message_row(message: ChatMessage) -> dict[str, Any]:
    """A message (with its id) as the functions append it to `runs_message`."""
    meta = message.metadata or {}
    return {
        "message_id": message.id,
        "role": message.role.value,
        "content": message.content,
        "tool_calls": None
        if message.tool_calls is None
        else [c.model_dump(mode="json") for c in message.tool_calls],
        "tool_call_id": message.tool_call_id,
        "visibility": message.visibility.value,
        "run_id": meta.get("run_id"),
        "step_index": meta.get("step_index"),
        "metadata": message.metadata,
    }
