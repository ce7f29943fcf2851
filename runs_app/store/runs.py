"""Run records: reads, and the writes an operator or a test makes outside an attempt (`create_run`,
`checkpoint`: the reference's `ThreadRunStore` surface). The writes of an attempt are attempts.py's."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from django.db import IntegrityError, transaction

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus, can_run_transition
from mailbox_app.contract.message import ChatMessage, MessageRecord, MessageSeqRange, RunMessageInput
from mailbox_app.contract.storage import AlreadyExists, InvalidInput, NotFound, RunPage, RunRecord
from runs_app.models import Run, Thread
from runs_app.store.messages import append_locked
from runs_app.store.records import MAX_RUN_PAGE, run_columns, run_record
from runs_app.store.threads import lock_thread


def load_run(*, run_id: str) -> RunRecord | None:
    row = Run.objects.filter(run_id=run_id).first()
    return None if row is None else run_record(row)


def require_run(*, run_id: str) -> RunRecord:
    run = load_run(run_id=run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def load_runs(*, run_ids: Collection[str]) -> dict[str, RunRecord]:
    """The runs of `run_ids` that exist, by id, in one query (a page of them)."""
    rows = Run.objects.filter(run_id__in=list(run_ids)) if run_ids else []
    return {row.run_id: run_record(row) for row in rows}


def latest_run(*, thread_id: str) -> RunRecord | None:
    """The most recently updated run; ties broken by created_at then run_id (fixes spec §7.10)."""
    row = Run.objects.filter(thread_id=thread_id).order_by("-updated_at", "-created_at", "-run_id").first()
    return None if row is None else run_record(row)


def list_runs(
    *,
    status: RunStatus | None = None,
    thread_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> RunPage:
    limit = max(1, min(limit, MAX_RUN_PAGE))
    offset = max(offset, 0)
    qs = Run.objects.all()
    if status is not None:
        qs = qs.filter(status=RunStatus(status).value)
    if thread_id is not None:
        qs = qs.filter(thread_id=thread_id)
    total = qs.count()
    rows = list(qs.order_by("created_at", "run_id")[offset : offset + limit])
    return RunPage(items=[run_record(r) for r in rows], total=total, has_more=offset + len(rows) < total)


def overdue_runs(*, now: int, limit: int) -> list[RunRecord]:
    """Running runs whose activation deadline passed before `now`, oldest deadline first (the partial
    index `run_running_deadline_idx`): what the sweep times out."""
    rows = Run.objects.filter(status=RunStatus.RUNNING.value, deadline_at__lt=now).order_by("deadline_at")
    return [run_record(r) for r in rows[:limit]]


def create_run(*, run: RunRecord) -> RunRecord:
    """Insert a new run (its thread must exist or is created); AlreadyExists when the id is taken."""
    try:
        with transaction.atomic():
            lock_thread(run.thread_id, run.created_at or now_ms())
            Run.objects.create(run_id=run.run_id, thread_id=run.thread_id, **run_columns(run))
    except IntegrityError:
        raise AlreadyExists(f"run {run.run_id} already exists") from None
    return run


def checkpoint(
    *,
    thread_id: str,
    messages: Sequence[ChatMessage],
    run: RunRecord,
    now: int | None = None,
    input_trigger_ids: list[str] | None = None,
) -> list[MessageRecord]:
    """Atomically append `messages`, upsert `run` and apply the run projection to the thread (§1.9).

    The log is append-only: messages already present (by id) are skipped, nothing is rewritten.
    A run that is already Done is never moved back (status rule of spec §1.8). With
    `input_trigger_ids`, the run's `input` is set to the whole log (1..last seq) under the same lock.
    """
    if run.thread_id != thread_id:
        raise InvalidInput(f"run {run.run_id} belongs to thread {run.thread_id}, not {thread_id}")
    stamp = now_ms() if now is None else now
    with transaction.atomic():
        thread = lock_thread(thread_id, stamp)
        records = append_locked(thread, messages, stamp)
        if input_trigger_ids is not None:
            total = thread.message_count
            run = run.model_copy(update={"input": whole_log_input(thread_id, total, input_trigger_ids)})
        current = (
            Run.objects.select_for_update().filter(run_id=run.run_id).values("thread_id", "status").first()
        )
        if current is not None:
            if current["thread_id"] != thread_id:
                raise InvalidInput(f"run {run.run_id} belongs to thread {current['thread_id']}")
            if not can_run_transition(RunStatus(current["status"]), run.status):
                raise InvalidInput(
                    f"run {run.run_id}: {current['status']} -> {run.status.value} is not allowed"
                )
            Run.objects.filter(run_id=run.run_id).update(**run_columns(run))
        else:
            Run.objects.create(run_id=run.run_id, thread_id=thread_id, **run_columns(run))
        _apply_run_projection(thread, run)
        thread.updated_at = stamp
        thread.save()
    return records


def whole_log_input(thread_id: str, total: int, trigger_ids: list[str]) -> RunMessageInput:
    """A prepared run's input: the whole log (1..last seq) and the messages that triggered it."""
    return RunMessageInput(
        thread_id=thread_id,
        range=MessageSeqRange(from_seq=1, to_seq=total) if total > 0 else None,
        trigger_message_ids=trigger_ids,
    )


def _apply_run_projection(thread: Thread, run: RunRecord) -> None:
    thread.latest_run_id = run.run_id
    if thread.parent_thread_id is None and run.request and run.request.parent_thread_id:
        thread.parent_thread_id = run.request.parent_thread_id.strip() or None
    if run.status is RunStatus.CREATED:
        thread.active_run_id, thread.open_run_id = None, run.run_id
    elif run.status is RunStatus.RUNNING:
        thread.active_run_id, thread.open_run_id = run.run_id, run.run_id
    elif run.status is RunStatus.WAITING:
        thread.active_run_id, thread.open_run_id = None, run.run_id
    else:
        if thread.active_run_id == run.run_id:
            thread.active_run_id = None
        if thread.open_run_id == run.run_id:
            thread.open_run_id = None
