"""Ending a run with what closes it: a statement that ends a run (attempts.CANCEL_WAITING_RUN,
mailbox_tables.TERMINALIZE_RUN) appends, in the same statement, the messages that close what the run
left open (mailbox_app/contract/history.py), computed from the run as it is under its row lock."""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction

from mailbox_app.contract.history import Closer
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.storage import RunRecord
from runs_app.store.records import existing_message_ids, fetch_run, message_rows

# The run as the statement that ends it will find it: locked, so the closing messages computed from it
# (a waiting run's tickets) still hold when they are written.
LOCK_RUN = "SELECT * FROM runs_run WHERE run_id = %(run_id)s FOR UPDATE"


def end_run(statement: str, params: dict[str, Any], closing: Closer | None) -> RunRecord | None:
    """Run a statement that ends a run; with `closing`, the messages it computes from the run (read under
    the row lock the statement then updates it under) are appended by the statement."""
    if closing is None and params["thread_id"]:
        return fetch_run(statement, params | {"count": 0, "messages": "[]"})
    with transaction.atomic(savepoint=False):
        current = fetch_run(LOCK_RUN, {"run_id": params["run_id"]})
        if current is None or current.status is RunStatus.DONE:
            return None
        thread_id = str(params["thread_id"] or current.thread_id)
        closing_messages = [] if closing is None else closing(current)
        rows = message_rows(existing_message_ids(thread_id, closing_messages), closing_messages, uuid7)
        params = params | {"thread_id": thread_id, "count": len(rows), "messages": json.dumps(rows)}
        return fetch_run(statement, params)
