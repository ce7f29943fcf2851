"""Bring a run record in line with its terminal dispatch (spec §2.3): cancelled/superseded -> run
cancelled, dead letter -> run error — and emit the run's terminal event, so every stream ends.

The run is changed only while it still belongs to that dispatch: it exists on the dispatch's thread, is
not done, is not running under another dispatch, and no other live dispatch will activate it (the run
store's conditional `terminalize_run`). Call it inside the transaction that ended the dispatch where
there is one; the event is appended when that transaction commits.
"""

from __future__ import annotations

import logging

from django.db import transaction

from mailbox_app.contract import history
from mailbox_app.contract.history import RunTranscript
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.observability import metrics
from mailbox_app.realtime import events
from mailbox_app.store.ports import run_store
from mailbox_app.webhooks import outbox

log = logging.getLogger(__name__)
DEFAULT_DEAD_LETTER_REASON = "mailbox dispatch dead-lettered"
_ENDS_RUN = frozenset({DispatchStatus.CANCELLED, DispatchStatus.SUPERSEDED, DispatchStatus.DEAD_LETTER})


@metrics.marks_run
def terminalize_run_for_dispatch(
    dispatch: DispatchRecord | None, *, now: int | None = None, transcript: RunTranscript | None = None
) -> RunRecord | None:
    """Returns the updated run, or None when nothing had to change. What the run leaves open — the
    `transcript` of the attempt that ran it (only that attempt may pass it), a waiting run's tickets — is
    closed in the same statement (mailbox_app/contract/history.py)."""
    if dispatch is None or dispatch.status not in _ENDS_RUN:
        return None
    stamp = now_ms() if now is None else now
    if dispatch.status is DispatchStatus.DEAD_LETTER:
        reason = dispatch.run_error or dispatch.last_error or DEFAULT_DEAD_LETTER_REASON
        termination = TerminationReason(type="error", value=reason)
        error_payload: dict[str, str] | None = {"message": reason}
        closing_reason = f"dead letter: {reason}"
    else:
        termination = TerminationReason(type="cancelled")
        error_payload = None
        closing_reason = dispatch.status.value
    # joins the caller's transaction (no savepoint); the sweep and reconcile call it outside one, and
    # then the run's end and its webhook outbox row still commit together
    with transaction.atomic(savepoint=False):
        updated = run_store().terminalize_run(
            run_id=dispatch.run_id,
            thread_id=dispatch.thread_id,
            dispatch_id=dispatch.dispatch_id,
            session_id=dispatch.dispatch_instance_id,
            termination=termination,
            error_payload=error_payload,
            now=stamp,
            ended_at=dispatch.completed_at or dispatch.updated_at or stamp,
            closing=history.closer(closing_reason, transcript),
        )
        if updated is not None:
            emit_finish_on_commit(updated, dispatch.dispatch_id)
    return updated


def emit_finish_on_commit(run: RunRecord, dispatch_id: str) -> None:
    """The run's terminal (or waiting) event, appended once the current transaction commits; called in
    the transaction that ended or suspended the run, which also writes its webhook outbox row."""
    payload = events.finish_payload(
        run.run_id,
        dispatch_id,
        run.status.value,
        None if run.termination_reason is None else run.termination_reason.model_dump(mode="json"),
        run.final_output,
    )
    transaction.on_commit(lambda: _append(run.run_id, events.RUN_FINISH, payload), robust=True)
    outbox.record_run_event(run)  # its delivery is rung after the event above is appended


def emit_on_commit(run_id: str, event_type: str, payload: dict[str, object]) -> None:
    transaction.on_commit(lambda: _append(run_id, event_type, payload), robust=True)


def _append(run_id: str, event_type: str, payload: dict[str, object]) -> None:
    try:
        events.append_event(run_id, event_type, payload)
    except Exception:
        # The run's state is durable; a stream that misses its end closes on its idle timeout.
        log.warning("could not append %s for run %s", event_type, run_id, exc_info=True)
