"""Celery entry points: ids in, one service call out. Stable names; doorbells are idempotent."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from mailbox_app import store
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.observability import metrics
from mailbox_app.realtime import doorbells
from mailbox_app.services import maintenance, schedules
from mailbox_app.webhooks import delivery, outbox
from mailbox_app.worker import dispatch_signals
from mailbox_app.worker.execution import drain_thread


@shared_task(name=doorbells.DISPATCH_TASK, bind=True, acks_late=True, max_retries=None, ignore_result=True)
def dispatch_thread(self: Any, thread_id: str, dispatch_id: str | None = None) -> str:
    decision = dispatch_signals.handle_dispatch_signal(
        thread_id, dispatch_id, deliveries=self.request.retries + 1
    )
    metrics.record_signal(decision, self.request.retries + 1, self.request.delivery_info)
    if decision.action is dispatch_signals.SignalAction.RETRY:
        raise self.retry(countdown=decision.retry_after_ms / 1000)
    return decision.attempt.value


@shared_task(name=doorbells.RUN_CLAIMED_TASK, acks_late=True, ignore_result=True)
def run_claimed(thread_id: str, dispatch_id: str, claim_token: str | None = None) -> str:
    """Execute a dispatch claimed inline by a submit (or by a drain that stopped), then drain the thread.

    With the claim token in the message nothing is read first: the thread lock is taken with it and the
    fenced start decides (a duplicate hand-over finds the lock held by the same token, or the claim
    settled, and leaves). Messages without one (sent before tokens travelled) read the row."""
    if claim_token:
        claim = DispatchRecord(
            dispatch_id=dispatch_id,
            thread_id=thread_id,
            run_id="",
            status=DispatchStatus.CLAIMED,
            claim_token=claim_token,
        )
        return drain_thread(thread_id, first=claim).value
    dispatch = store.load_dispatch(dispatch_id)
    # A claim that already started (dispatch_instance_id set) belongs to whoever started it: this is a
    # duplicate or redelivered hand-over. Its lease decides; the sweep reclaims it if that worker died.
    fresh = (
        dispatch is not None
        and dispatch.status is DispatchStatus.CLAIMED
        and dispatch.dispatch_instance_id is None
    )
    return drain_thread(thread_id, first=dispatch if fresh else None).value


@shared_task(name="mailbox.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    return maintenance.sweep().as_dict()


@shared_task(name="mailbox.reconcile", ignore_result=True)
def reconcile() -> int:
    return maintenance.reconcile_terminal()


@shared_task(name="mailbox.gc", ignore_result=True)
def gc() -> int:
    return maintenance.gc()


@shared_task(name=outbox.DELIVER_TASK, acks_late=True, ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    """One attempt at a webhook outbox row; a failed attempt rings its own retry (with backoff)."""
    return delivery.deliver(delivery_id).value


@shared_task(name=outbox.REDRIVE_TASK, ignore_result=True)
def redrive_webhooks() -> int:
    """The beat's safety net: ring every due webhook delivery nobody holds."""
    return delivery.redrive()


@shared_task(name=schedules.FIRE_TASK, ignore_result=True)
def fire_schedule(schedule_id: str) -> str:
    """Beat's firing of a thread's schedule (its PeriodicTask's kwargs): at most one run per slot."""
    return schedules.fire(schedule_id).outcome.value
