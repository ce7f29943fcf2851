"""Ringing workers: a Celery message is a doorbell for a thread, never the truth (sending only).

Every ring is sent when the current transaction commits, so a worker never hears of a row it cannot see
yet. A broker that is down does not fail the caller: the dispatch row is the queue, and the beat sweep
rings again for every claimable thread.

A ring for later is a Celery countdown only when it is near (AWAKEN_DOORBELL_MAX_COUNTDOWN_MS, at most
half the broker's visibility timeout): a Redis broker redelivers a countdown longer than its visibility
timeout every timeout, and each copy waits in a worker's memory (docs/pitfalls.md §1). A later one is
not sent at all: the queued dispatch row with its `available_at` is already the durable record, and the
sweep rings each such dispatch ahead of its time with a short countdown (`ring_at` from
mailbox_app/services/maintenance.py).

The Celery app is the host project's (`celery.current_app`), so the app imports nothing of the project.
"""

from __future__ import annotations

import logging

from celery import current_app
from django.db import transaction

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms

log = logging.getLogger(__name__)
DISPATCH_TASK = "mailbox.dispatch_thread"
RUN_CLAIMED_TASK = "mailbox.run_claimed"


def send_doorbell(name: str, args: list[str | None], countdown_s: float | None = None) -> None:
    """Publish one doorbell task; a broker error is logged, never raised (the sweep rings again)."""
    try:
        current_app.send_task(name, args=args, countdown=countdown_s)
    except Exception:
        log.warning("doorbell %s %s not sent; the sweep will ring again", name, args[:2], exc_info=True)


def ring_on_commit(thread_id: str, dispatch_id: str | None) -> None:
    """Wake a worker for `thread_id` once the current transaction commits."""
    transaction.on_commit(lambda: send_doorbell(DISPATCH_TASK, [thread_id, dispatch_id]))


def ring_at(thread_id: str, dispatch_id: str | None, at_ms: int) -> bool:
    """Wake a worker at `at_ms` (a delayed start, a nacked dispatch's retry time) once the current
    transaction commits, if that is within the longest countdown; else send nothing (the sweep rings it
    when it comes due). Whether a doorbell was scheduled."""
    delay_ms = max(at_ms - now_ms(), 0)
    if delay_ms > max_countdown_ms():
        log.debug("doorbell for %s at %d parked: the sweep rings it when it comes due", thread_id, at_ms)
        return False
    transaction.on_commit(
        lambda: send_doorbell(DISPATCH_TASK, [thread_id, dispatch_id], countdown_s=delay_ms / 1000)
    )
    return True


def max_countdown_ms() -> int:
    return max(int(awaken_settings.DOORBELL_MAX_COUNTDOWN_MS), 0)


def hand_over_claimed_on_commit(thread_id: str, dispatch_id: str, claim_token: str) -> None:
    """A submit claimed inline: a worker takes over the execution of that claim (the token lets it take
    the thread lock and the fenced start without reading the row first)."""
    transaction.on_commit(lambda: send_doorbell(RUN_CLAIMED_TASK, [thread_id, dispatch_id, claim_token]))
