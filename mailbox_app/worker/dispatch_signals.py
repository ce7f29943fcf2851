"""Handling a dispatch signal (a doorbell): drain the thread it names, and decide ack or retry.

A Celery message is a doorbell for a thread, never the truth. Lost, duplicated or late doorbells are
harmless: the row in PostgreSQL is the queue, and the sweep rings again for every claimable thread.
`handle_dispatch_signal` is the reference's `handle_dispatch_signal_entry`; ringing is
`mailbox_app.realtime.doorbells` (sending only).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mailbox_app import store
from mailbox_app.conf import awaken_settings, claim_policy
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.retry import blocked_signal_delay_ms
from mailbox_app.realtime import doorbells
from mailbox_app.worker.execution import DispatchAttempt, drain_fair, drain_thread


class SignalAction(StrEnum):
    ACK = "ack"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class SignalDecision:
    action: SignalAction
    attempt: DispatchAttempt
    retry_after_ms: int = 0


def handle_dispatch_signal(
    thread_id: str, dispatch_id: str | None, *, deliveries: int | None
) -> SignalDecision:
    """Claimed/Busy -> ack; NoEligible while the signalled dispatch is still queued -> retry with the
    blocked backoff (at least until it becomes available); claim error -> retry.

    The reference's `handle_dispatch_signal_entries` (one doorbell at a time here: Celery delivers them) and
    its `dispatch_signal_still_available` check."""
    attempt = drain_thread(thread_id)
    if attempt is DispatchAttempt.NO_ELIGIBLE and claim_policy().fair:
        attempt = drain_fair()  # nothing here: the worker takes the fairest work elsewhere
    if attempt is DispatchAttempt.CLAIMED or attempt is DispatchAttempt.BUSY:
        return SignalDecision(SignalAction.ACK, attempt)
    delay = blocked_signal_delay_ms(
        deliveries,
        base_ms=awaken_settings.DISPATCH_SIGNAL_NACK_BASE_DELAY_MS,
        max_ms=awaken_settings.DISPATCH_SIGNAL_NACK_MAX_DELAY_MS,
    )
    if attempt is DispatchAttempt.TRANSIENT_ERROR:
        return SignalDecision(SignalAction.RETRY, attempt, delay)
    if dispatch_id is None:
        return SignalDecision(SignalAction.ACK, attempt)
    pending = store.load_dispatch(dispatch_id)
    if pending is None or pending.status is not DispatchStatus.QUEUED:
        return SignalDecision(SignalAction.ACK, attempt)
    if store.blocking_limit(pending.agent_key, store.thread_owner_key(thread_id)) is not None:
        # held by a concurrency limit: the attempt that frees the slot claims the next one in its finish
        # transaction (and the sweep rings again), so this doorbell does not poll
        return SignalDecision(SignalAction.ACK, attempt)
    if store.pauses_holding(thread_id, [pending.agent_key]):
        # held by a pause: its resume rings the thread, so this doorbell does not poll either
        return SignalDecision(SignalAction.ACK, attempt)
    not_before = pending.available_at - now_ms()
    if not_before > doorbells.max_countdown_ms():  # too far off for a countdown: the sweep rings it
        return SignalDecision(SignalAction.ACK, attempt)
    return SignalDecision(SignalAction.RETRY, attempt, max(delay, not_before))
