"""Reads for the API, scoped to the requesting user (a thread belongs to the user who created it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.contract.storage import RunRecord, ThreadRecord
from mailbox_app.services import mailbox
from runs_app import store
from runs_app.models import Run, Thread


def owned_thread(user_id: int, thread_id: str) -> ThreadRecord | None:
    """The thread if it exists and belongs to the user; None otherwise (callers answer 404)."""
    thread = store.load_thread(thread_id=thread_id)
    return thread if thread is not None and thread.owner_id == user_id else None


def owned_thread_view(user_id: int, thread_id: str) -> store.ThreadView | None:
    """`owned_thread` with its status and its open and active runs, in one round trip."""
    view = store.load_thread_view(thread_id=thread_id)
    return view if view is not None and view.thread.owner_id == user_id else None


def thread_taken_by_other(user_id: int, thread_id: str) -> bool:
    thread = store.load_thread(thread_id=thread_id)
    return thread is not None and thread.owner_id != user_id


def submit_target(user_id: int, thread_id: str) -> tuple[bool, ThreadRecord | None]:
    """Whether another user has the thread id, and the thread when it is the user's (None: no such
    thread yet, a submit creates it)."""
    thread = store.load_thread(thread_id=thread_id)
    if thread is None:
        return False, None
    return thread.owner_id != user_id, (thread if thread.owner_id == user_id else None)


def owned_run(user_id: int, run_id: str) -> RunRecord | None:
    run = store.load_run(run_id=run_id)
    if run is None or owned_thread(user_id, run.thread_id) is None:
        return None
    return run


def owned_dispatch(user_id: int, dispatch_id: str) -> DispatchRecord | None:
    """The dispatch if its thread belongs to the user; None otherwise (callers answer 404)."""
    dispatch = mailbox.load_dispatch(dispatch_id)
    if dispatch is None or owned_thread(user_id, dispatch.thread_id) is None:
        return None
    return dispatch


def user_threads(user_id: int) -> QuerySet[Thread]:
    return Thread.objects.filter(owner_id=user_id).order_by("-updated_at", "id")


def user_runs(
    user_id: int,
    *,
    status: RunStatus | None = None,
    thread_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> QuerySet[Run]:
    """The user's runs, oldest first; `metadata` keeps those whose metadata contains it (jsonb `@>`,
    the GIN index `run_metadata_gin`)."""
    qs = Run.objects.filter(thread__owner_id=user_id)
    if metadata is not None:
        qs = qs.filter(metadata__contains=metadata)
    if status is not None:
        qs = qs.filter(status=status.value)
    if thread_id is not None:
        qs = qs.filter(thread_id=thread_id)
    return qs.order_by("created_at", "run_id")


def user_runs_page(
    user_id: int,
    *,
    status: RunStatus | None = None,
    thread_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    limit: int,
    offset: int,
) -> tuple[list[RunRecord], int]:
    """A window of `user_runs` and how many there are in all: a fixed number of queries for any page."""
    qs = user_runs(user_id, status=status, thread_id=thread_id, metadata=metadata)
    total = qs.count()
    ids = list(qs.values_list("run_id", flat=True)[offset : offset + limit])
    runs = store.load_runs(run_ids=ids)
    return [runs[i] for i in ids if i in runs], total


def user_threads_page(user_id: int, *, limit: int, offset: int) -> tuple[list[ThreadRecord], int]:
    """A window of `user_threads` (most recently updated first) and how many the user has in all."""
    qs = user_threads(user_id)
    total = qs.count()
    ids = list(qs.values_list("id", flat=True)[offset : offset + limit])
    threads = store.load_threads(thread_ids=ids)
    return [threads[i] for i in ids if i in threads], total


def thread_runs(threads: Sequence[ThreadRecord]) -> dict[str, RunRecord]:
    """The open and active runs of `threads`, by id, in one query."""
    return store.load_runs(run_ids={i for t in threads for i in (t.open_run_id, t.active_run_id) if i})


def active_run(thread_id: str) -> RunRecord | None:
    """spec §5.3 get_active_run: the thread's active Running run, else its open Running/Waiting run,
    else the most recently updated Running or Waiting run."""
    thread = store.load_thread(thread_id=thread_id)
    if thread is not None and thread.active_run_id:
        run = store.load_run(run_id=thread.active_run_id)
        if run is not None and run.thread_id == thread_id and run.status is RunStatus.RUNNING:
            return run
    if thread is not None and thread.open_run_id:
        run = store.load_run(run_id=thread.open_run_id)
        if (
            run is not None
            and run.thread_id == thread_id
            and run.status in {RunStatus.RUNNING, RunStatus.WAITING}
        ):
            return run
    row = (
        Run.objects.filter(thread_id=thread_id, status__in=[RunStatus.RUNNING.value, RunStatus.WAITING.value])
        .order_by("-updated_at", "-created_at", "-run_id")
        .first()
    )
    return None if row is None else store.load_run(run_id=row.run_id)
