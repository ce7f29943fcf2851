"""Ringing workers: a Celery message is a doorbell for a thread, never the truth (sending only).

Every ring is sent when the current transaction commits, so a worker never hears of a row it cannot see
yet. A broker that is down does not fail the caller: the dispatch row is the queue, and the beat sweep
rings again for every claimable thread.

The Celery app is the host project's (`celery.current_app`), so the app imports nothing of the project.
"""

from __future__ import annotations

import logging

from celery import current_app
from django.db import transaction

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


def ring_at(thread_id: str, dispatch_id: str | None, at_ms: int) -> None:
    """Wake a worker at `at_ms` (a nacked dispatch's retry time); the sweep is the safety net."""
    delay_s = max(at_ms - now_ms(), 0) / 1000
    transaction.on_commit(lambda: send_doorbell(DISPATCH_TASK, [thread_id, dispatch_id], countdown_s=delay_s))


def hand_over_claimed_on_commit(thread_id: str, dispatch_id: str, claim_token: str) -> None:
    """A submit claimed inline: a worker takes over the execution of that claim (the token lets it take
    the thread lock and the fenced start without reading the row first)."""
    transaction.on_commit(lambda: send_doorbell(RUN_CLAIMED_TASK, [thread_id, dispatch_id, claim_token]))
