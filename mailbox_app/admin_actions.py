"""Operator state moves (requeue dead letters), shared by the admin and management commands."""

from __future__ import annotations

from django.db import transaction

from mailbox_app import doorbells, store
from mailbox_app.contract.ids import now_ms
from mailbox_app.models import Dispatch
from mailbox_app.ports import run_store


def requeue_dead_letters(
    *, dispatch_ids: list[str] | None = None, thread_id: str | None = None, everything: bool = False
) -> list[str]:
    """Dead-lettered -> queued with attempt_count 0, available now, in the thread's current epoch; the
    finished runs are reopened and each affected thread is rung."""
    qs = Dispatch.objects.filter(status="dead_letter")
    if dispatch_ids:
        qs = qs.filter(dispatch_id__in=dispatch_ids)
    elif thread_id:
        qs = qs.filter(thread_id=thread_id)
    elif not everything:
        return []
    now = now_ms()
    with transaction.atomic():
        rows = list(qs.select_for_update().values_list("dispatch_id", "thread_id", "run_id"))
        for dispatch_id, thread, _run in rows:
            # the operator asks for a run now: stamp the thread's current epoch, or the next claim
            # would supersede a dispatch requeued after an interrupt
            Dispatch.objects.filter(dispatch_id=dispatch_id).update(
                status="queued",
                attempt_count=0,
                available_at=now,
                completed_at=None,
                updated_at=now,
                dispatch_epoch=store.current_dispatch_epoch(thread),
                # a fresh attempt: drop the previous attempt's runtime trace, as a nack that requeues does
                dispatch_instance_id=None,
                run_status=None,
                termination=None,
                run_response=None,
                run_error=None,
            )
        for run_id in {r[2] for r in rows}:
            run_store().reopen_run(run_id=run_id, now=now)
        for thread in {r[1] for r in rows}:
            doorbells.ring_on_commit(thread, None)
    return [r[0] for r in rows]
