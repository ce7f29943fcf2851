"""Bring a run record in line with its terminal dispatch (spec §2.3): cancelled/superseded -> run
cancelled, dead letter -> run error. Only when the run exists, is on the dispatch's thread and is not done."""

from __future__ import annotations

from mailbox_app.ids import now_ms
from mailbox_app.payloads import RunRecord, TerminationReason
from mailbox_app.ports import run_store
from mailbox_app.records import DispatchRecord
from mailbox_app.states import DispatchStatus, RunStatus

DEFAULT_DEAD_LETTER_REASON = "mailbox dispatch dead-lettered"


def terminalize_run_for_dispatch(
    dispatch: DispatchRecord | None, *, now: int | None = None
) -> RunRecord | None:
    """Returns the updated run, or None when nothing had to change."""
    if dispatch is None or dispatch.status not in {
        DispatchStatus.CANCELLED,
        DispatchStatus.SUPERSEDED,
        DispatchStatus.DEAD_LETTER,
    }:
        return None
    store = run_store()
    run = store.load_run(run_id=dispatch.run_id)
    if run is None or run.thread_id != dispatch.thread_id or run.status is RunStatus.DONE:
        return None
    stamp = now_ms() if now is None else now
    if dispatch.status is DispatchStatus.DEAD_LETTER:
        reason = dispatch.run_error or dispatch.last_error or DEFAULT_DEAD_LETTER_REASON
        termination = TerminationReason(type="error", value=reason)
        error_payload: dict[str, str] | None = {"message": reason}
    else:
        termination = TerminationReason(type="cancelled")
        error_payload = None
    updated = run.model_copy(
        update={
            "status": RunStatus.DONE,
            "termination_reason": termination,
            "error_payload": error_payload,
            "dispatch_id": dispatch.dispatch_id,
            "session_id": dispatch.dispatch_instance_id,
            "waiting": None,
            "finished_at": stamp,
            "updated_at": stamp,
        }
    )
    store.checkpoint(thread_id=run.thread_id, messages=[], run=updated, now=stamp)
    return updated
