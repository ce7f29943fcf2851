"""Webhooks, the write side of a transactional outbox.

A submit that names a `webhook` URL writes a subscription (run → URL, and the submitter whose secret
signs its deliveries) in its own transaction. The
transaction that ends a run (done, cancelled, superseded, dead-lettered) or suspends it (waiting for a
decision) writes one outbox row per event by joining that subscription — or `AWAKEN_WEBHOOK_URL` when
the run has none — in a single statement, so an attempt that lost its fence (its transaction rolled
back) leaves no row, and a run that ended always has one. When that transaction commits the delivery
task is rung (best effort: the beat re-drives rows nobody delivered). Delivery: `delivery.py`. The row
keeps the subscription's owner (NULL for a row to AWAKEN_WEBHOOK_URL): it says whose secret signs it.

The body is `{"id", "event", "created_at", "run"}` with the run in the shape `GET runs/{id}` returns,
as the ending transaction wrote it; `id` is the idempotency id every attempt repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from typing import Any

from celery import current_app
from django.db import connection, transaction

from mailbox_app.conf import awaken_settings
from mailbox_app.contract import wire
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.storage import RunRecord
from mailbox_app.contract.wire import iso_ms

log = logging.getLogger(__name__)

DELIVER_TASK = "mailbox.deliver_webhook"
REDRIVE_TASK = "mailbox.redrive_webhooks"
# The Celery queue the project routes both tasks to (CELERY_TASK_ROUTES) and its `webhooks` worker
# consumes: slow receivers then hold webhook slots only, never a dispatch's. A host project without the
# route runs them on its default queue.
QUEUE = "webhooks"
EVENT_FINISHED = "run.finished"
EVENT_WAITING = "run.waiting"
EVENTS = {RunStatus.DONE: EVENT_FINISHED, RunStatus.WAITING: EVENT_WAITING}
SIGNATURE_HEADER = "X-Awaken-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-Awaken-Event"
# Test hook (AWAKEN_FAULT_POINT): the process exits after the run's end committed, before the ring.
FAULT_BEFORE_DELIVERY = "before_webhook_delivery"

SUBSCRIBE = """
INSERT INTO mailbox_webhook_subscription (run_id, url, owner_id, created_at)
VALUES (%(run_id)s, %(url)s, %(owner_id)s, %(now)s)
ON CONFLICT (run_id) DO UPDATE
   SET url = EXCLUDED.url, owner_id = EXCLUDED.owner_id, created_at = EXCLUDED.created_at
"""

# The run's own subscription (with its owner), else the default URL (no owner); no row at all when
# neither names a URL.
RECORD_EVENT = """
INSERT INTO mailbox_webhook_outbox
       (delivery_id, run_id, thread_id, event, url, owner_id, payload, status, attempts, next_attempt_at,
        created_at, updated_at)
SELECT %(delivery_id)s, %(run_id)s, %(thread_id)s, %(event)s, target.url, target.owner_id,
       %(payload)s::jsonb, 'pending', 0, %(now)s, %(now)s, %(now)s
  FROM (SELECT COALESCE(s.url, NULLIF(%(default_url)s, '')) AS url, s.owner_id
          FROM (SELECT 1) AS one
          LEFT JOIN mailbox_webhook_subscription s ON s.run_id = %(run_id)s) AS target
 WHERE target.url IS NOT NULL
RETURNING delivery_id
"""


def subscribe(run_id: str, url: str, *, owner_id: int | None = None, now: int | None = None) -> None:
    """Call the (already checked) `url` for `run_id`'s events, signed with `owner_id`'s secret (None:
    unsigned); inside the submit's transaction."""
    params = {"run_id": run_id, "url": url, "owner_id": owner_id, "now": now_ms() if now is None else now}
    with connection.cursor() as cursor:
        cursor.execute(SUBSCRIBE, params)


def record_run_event(run: RunRecord) -> str | None:
    """Inside the transaction that ended or suspended `run`: its outbox row (None when no URL applies,
    or the run neither ended nor waits), by one INSERT … SELECT that looks the run's subscription up
    itself. The delivery task is rung once that transaction commits. (With the built-in run store an
    attempt's finish writes the row in its own statement: mailbox_app/store/runs_tables/attempt.sql.)"""
    event = EVENTS.get(run.status)
    if event is None:
        return None
    params: dict[str, Any] = {
        "delivery_id": uuid7(),
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "event": event,
        "payload": run.model_dump_json(),
        "now": now_ms(),
        "default_url": awaken_settings.WEBHOOK_URL,
    }
    with connection.cursor() as cursor:
        cursor.execute(RECORD_EVENT, params)
        row = cursor.fetchone()
    if row is None:
        return None
    delivery_id = str(row[0])
    transaction.on_commit(lambda: after_commit(delivery_id), robust=True)
    return delivery_id


def after_commit(delivery_id: str) -> None:
    """Once the transaction that wrote the outbox row has committed: ring its delivery."""
    if awaken_settings.FAULT_POINT == FAULT_BEFORE_DELIVERY:
        os._exit(137)
    ring(delivery_id)


def ring(delivery_id: str, *, countdown_s: float | None = None) -> None:
    """Ask a worker to deliver `delivery_id` (now, or after `countdown_s`). A broker that is down does
    not fail the caller: the row is the queue, the beat re-drives it."""
    try:
        current_app.send_task(DELIVER_TASK, args=[delivery_id], countdown=countdown_s)
    except Exception:
        log.warning("webhook delivery %s not rung; the re-drive will", delivery_id, exc_info=True)


def ring_on_commit(delivery_ids: list[str]) -> None:
    for delivery_id in delivery_ids:
        transaction.on_commit(lambda d=delivery_id: ring(d), robust=True)  # type: ignore[misc]


# --- the body ----------------------------------------------------------------------------------------


def run_json(payload: dict[str, Any]) -> dict[str, Any]:
    """A stored run record in the shape of `GET runs/{id}` (mailbox_app/contract/wire.py)."""
    return wire.run_json(RunRecord.model_validate(payload))


def body_of(delivery_id: str, event: str, created_at: int, payload: dict[str, Any]) -> bytes:
    """The request body: the same bytes on every attempt (the signature and the id cover them)."""
    document = {"id": delivery_id, "event": event, "created_at": iso_ms(created_at), "run": run_json(payload)}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def signature(body: bytes, secret: str) -> str:
    """The legacy `X-Awaken-Signature`: `sha256=<hex HMAC-SHA256 of the body>` keyed with
    AWAKEN_WEBHOOK_SECRET, sent only to AWAKEN_WEBHOOK_URL (beside the Standard Webhooks headers)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str, secret: str) -> bool:
    """What a receiver does: recompute the signature and compare in constant time."""
    return hmac.compare_digest(signature(body, secret), header)
