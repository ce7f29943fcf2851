"""Bring a run record in line with its terminal dispatch (spec §2.3): cancelled/superseded -> run
cancelled, dead letter -> run error — and emit the run's terminal event, so every stream ends (and
re-emit it, `reemit_lost_finishes`, when Redis lost it).

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
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.observability import metrics
from mailbox_app.realtime import events
from mailbox_app.realtime.locks import ThreadLock, lock_key
from mailbox_app.store.ports import run_store
from mailbox_app.webhooks import outbox

log = logging.getLogger(__name__)
DEFAULT_DEAD_LETTER_REASON = "mailbox dispatch dead-lettered"
_ENDS_RUN = frozenset({DispatchStatus.CANCELLED, DispatchStatus.SUPERSEDED, DispatchStatus.DEAD_LETTER})
_STOPPED = frozenset({RunStatus.DONE, RunStatus.WAITING})  # the states a run_finish announces
REEMIT_BATCH = 500


@metrics.marks_run
def terminalize_run_for_dispatch(
    dispatch: DispatchRecord | None, *, now: int | None = None, transcript: RunTranscript | None = None
) -> RunRecord | None:
    """Returns the updated run, or None when nothing had to change. What the run leaves open — the
    `transcript` of the attempt that ran it (only that attempt may pass it), a waiting run's tickets — is
    closed in the same statement (mailbox_app/contract/history.py).

    The reference's `checkpoint_terminal_dispatch_run`, `mark_dispatch_run_cancelled`
    (`mark_dispatch_run_cancelled_inner`), `mark_cancelled_dispatch_run_cancelled`,
    `mark_superseded_dispatch_run_cancelled` and `mark_dead_letter_dispatch_run_error`
    (`mark_dead_letter_dispatch_run_error_inner`), in one conditional statement."""
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
    payload = _finish_payload(run, dispatch_id)
    fingerprint = finish_fingerprint(run)
    transaction.on_commit(lambda: _append_finish(run.run_id, payload, fingerprint), robust=True)
    outbox.record_run_event(run)  # its delivery is rung after the event above is appended


def emit_finish_written(
    run: RunRecord, dispatch_id: str, delivery_id: str | None, *, release: ThreadLock | None = None
) -> None:
    """`emit_finish_on_commit` after a fused finish (mailbox_app/store/runs_tables/attempt.sql), which
    has committed and wrote the webhook outbox row itself (`delivery_id`, None when no URL applies):
    the terminal event now — and, with `release`, the attempt's thread lock given back in the same Redis
    call — then the delivery's ring."""
    released = _append_finish(
        run.run_id,
        _finish_payload(run, dispatch_id),
        finish_fingerprint(run),
        release=None if release is None else (lock_key(release.thread_id), release.token),
    )
    if released and release is not None:
        release.mark_released()
    if delivery_id is not None:
        outbox.after_commit(delivery_id)


def emit_on_commit(run_id: str, event_type: str, payload: dict[str, object]) -> None:
    transaction.on_commit(lambda: _append(run_id, event_type, payload), robust=True)


def finish_fingerprint(run: RunRecord) -> str:
    """What tells one finish of a run from another: the activation's dispatch, the status it ended
    in, and when it ended (a waiting run that is later cancelled ends again, with the same dispatch).
    The finishing statement's record and the row reconcile reads later give the same one."""
    return f"{run.dispatch_id or ''}|{run.status.value}|{run.finished_at or ''}"


def reemit_lost_finishes(*, now: int | None = None, limit: int = REEMIT_BATCH) -> int:
    """Append the `run_finish` a stopped run's stream lacks (returns how many were appended).

    The finish is appended after its transaction commits, so a Redis error then, or a crash between
    the commit and the append, loses it, and every stream and wait on the run would wait for it in
    vain. The event stream lists the runs whose stream is open (events since their last finish, or a
    waiting finish: the run may end again), each due a look at some time (mailbox_app/realtime/
    events.py). For each run due, PostgreSQL says whether it stopped: a stopped run gets its finish
    unless one with the same fingerprint is in its stream already, and only while nothing was appended
    since its stream was looked at (a run that went on meanwhile keeps its stream as it is). A run still
    running is looked at again later. So each finish is appended once, by whichever comes first."""
    stamp = now_ms() if now is None else now
    appended = 0
    for run_id in events.due_open_runs(stamp, limit):
        top = events.top_id(run_id)  # before the run is read: a later append makes the re-emission moot
        run = run_store().load_run(run_id=run_id)
        if run is None:
            events.forget_open_run(run_id)
        elif run.status in _STOPPED:
            payload = _finish_payload(run, run.dispatch_id or "")
            fingerprint = finish_fingerprint(run)
            if events.append_finish(run_id, payload, fingerprint=fingerprint, expected_top=top):
                appended += 1
                log.warning("re-emitted the lost run_finish of run %s (%s)", run_id, run.status.value)
        else:
            events.look_again_later(run_id, stamp)
    return appended


def _finish_payload(run: RunRecord, dispatch_id: str) -> dict[str, object]:
    return events.finish_payload(
        run.run_id,
        dispatch_id,
        run.status.value,
        None if run.termination_reason is None else run.termination_reason.model_dump(mode="json"),
        run.final_output,
    )


def _append_finish(
    run_id: str, payload: dict[str, object], fingerprint: str, *, release: tuple[str, str] | None = None
) -> bool:
    """Whether the call went through (the finish appended, or already there)."""
    try:
        events.append_finish(run_id, payload, fingerprint=fingerprint, release=release)
    except Exception:
        # The run's state is durable; the reconcile pass re-emits the finish (reemit_lost_finishes).
        log.warning("could not append run_finish for run %s", run_id, exc_info=True)
        return False
    return True


def _append(run_id: str, event_type: str, payload: dict[str, object]) -> None:
    try:
        events.append_event(run_id, event_type, payload)
    except Exception:
        # The run's state is durable; a stream that misses its end closes on its idle timeout.
        log.warning("could not append %s for run %s", event_type, run_id, exc_info=True)
