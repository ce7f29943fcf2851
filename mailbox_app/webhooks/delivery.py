"""Webhooks, the delivery side: POST an outbox row, with retries, backoff and a bound; re-drive; GC.

One attempt: a fenced claim of the row (pending, due, not held by another attempt: `attempts + 1` and
an in-flight lease), the target re-checked after DNS resolution and the request sent to the checked
address under one total deadline (`transport.py`: DNS, connect, TLS, send, headers and the body read,
AWAKEN_WEBHOOK_TIMEOUT_MS in all), then the outcome written only while the row is still this attempt's.
The lease is the deadline plus `LEASE_MARGIN_MS`, so the beat's re-drive never rings a row an attempt
still holds. A 2xx delivers it; anything else (a deadline that passed too) is retried after
`min(base × 2^(n−1), max)` until `AWAKEN_WEBHOOK_MAX_ATTEMPTS`, then the row is `failed` (visible, with
a retry action, in the admin); a target that resolves to a non-public address is failed at once.
Delivery is at least once: a worker that dies after the receiver answered but before the outcome is
written delivers again (same `Idempotency-Key` / `webhook-id`), so receivers deduplicate on it.
Each attempt that claimed its row is counted once its outcome is written (`metrics.record_webhook_attempt`:
delivered, failed, gave_up, refused, or lost when the fenced write found the row no longer its own).

Signing (`signing.py`): a row of a subscription is signed with its owner's secret (`secret_store.py`),
looked up at each attempt; the project's AWAKEN_WEBHOOK_SECRET signs only rows to AWAKEN_WEBHOOK_URL.
A row with no secret to sign it is sent unsigned, saying so in `X-Awaken-Unsigned`.

The Celery task runs on a queue of its own (`outbox.QUEUE`, routed by the project's CELERY_TASK_ROUTES
and consumed by the Procfile's `webhooks` worker), so slow receivers hold webhook slots, not dispatch ones.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.db import connection, transaction

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms
from mailbox_app.observability import metrics, tracing
from mailbox_app.webhooks import outbox, secret_store, signing, transport
from mailbox_app.webhooks.targets import TargetRefused, WebhookTargetError, parse_target, resolve

log = logging.getLogger(__name__)

REDRIVE_BATCH = 500
PURGE_BATCH = 500
PURGE_MAX_BATCHES = 10  # at most PURGE_BATCH × PURGE_MAX_BATCHES rows per GC tick
ERROR_CHARS = 500
BACKOFF_MAX_EXPONENT = 20
USER_AGENT = "awaken-mailbox-webhooks/1"
UNSIGNED_HEADER = "X-Awaken-Unsigned"
# An attempt holds its row for its deadline plus this: the outcome's write, a paused process.
LEASE_MARGIN_MS = 10_000
# A delayed retry's task may arrive a little before its due time (another host's clock): still taken.
CLOCK_SKEW_MS = 1_000


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GAVE_UP = "gave_up"
    SKIPPED = "skipped"  # not due, held by another attempt, or already settled


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    delivery_id: str
    url: str
    event: str
    payload: dict[str, Any]
    attempt: int
    created_at: int
    owner_id: int | None = None  # the subscription's owner, whose secret signs it (None: the default URL)


CLAIM = """
UPDATE mailbox_webhook_outbox
   SET attempts = attempts + 1, locked_until = %(until)s, updated_at = %(now)s
 WHERE delivery_id = %(delivery_id)s AND status = 'pending' AND next_attempt_at <= %(now)s + %(skew)s
   AND (locked_until IS NULL OR locked_until <= %(now)s)
RETURNING url, event, payload, attempts, created_at, owner_id
"""

# Every outcome is fenced by the attempt number the claim returned: a stale attempt writes nothing.
DELIVERED = """
UPDATE mailbox_webhook_outbox
   SET status = 'delivered', delivered_at = %(now)s, updated_at = %(now)s, locked_until = NULL,
       last_status_code = %(code)s, last_error = NULL
 WHERE delivery_id = %(delivery_id)s AND status = 'pending' AND attempts = %(attempt)s
"""

RETRY = """
UPDATE mailbox_webhook_outbox
   SET next_attempt_at = %(retry_at)s, updated_at = %(now)s, locked_until = NULL,
       last_status_code = %(code)s, last_error = %(error)s
 WHERE delivery_id = %(delivery_id)s AND status = 'pending' AND attempts = %(attempt)s
"""

GAVE_UP = """
UPDATE mailbox_webhook_outbox
   SET status = 'failed', updated_at = %(now)s, locked_until = NULL,
       last_status_code = %(code)s, last_error = %(error)s
 WHERE delivery_id = %(delivery_id)s AND status = 'pending' AND attempts = %(attempt)s
"""

DUE = """
SELECT delivery_id FROM mailbox_webhook_outbox
 WHERE status = 'pending' AND next_attempt_at <= %(now)s
   AND (locked_until IS NULL OR locked_until <= %(now)s)
 ORDER BY next_attempt_at
 LIMIT %(limit)s
"""

RETRY_FAILED = """
UPDATE mailbox_webhook_outbox
   SET status = 'pending', attempts = 0, next_attempt_at = %(now)s, locked_until = NULL,
       updated_at = %(now)s
 WHERE delivery_id = ANY(%(ids)s) AND status = 'failed'
RETURNING delivery_id
"""

# Delivered rows past the TTL, a batch at a time; a run's subscription goes with its delivered
# `run.finished` row (a waiting run keeps it for the event that ends it).
PURGE = """
WITH doomed AS (
    SELECT delivery_id FROM mailbox_webhook_outbox
     WHERE status = 'delivered' AND delivered_at < %(before)s
     ORDER BY delivered_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM mailbox_webhook_outbox o USING doomed d
     WHERE o.delivery_id = d.delivery_id
    RETURNING o.run_id, o.event
), unsubscribed AS (
    DELETE FROM mailbox_webhook_subscription s
     WHERE s.run_id IN (SELECT run_id FROM gone WHERE event = %(finished)s)
)
SELECT count(*) FROM gone
"""


def backoff_ms(attempt: int) -> int:
    """Delay after failed attempt `attempt` (1-based): min(base × 2^(attempt−1), max)."""
    exponent = min(max(attempt - 1, 0), BACKOFF_MAX_EXPONENT)
    delay = awaken_settings.WEBHOOK_RETRY_DELAY_MS * (1 << exponent)
    return int(min(delay, awaken_settings.WEBHOOK_MAX_RETRY_DELAY_MS))


def lease_ms() -> int:
    """How long an attempt holds its row: its whole deadline, and a margin for writing the outcome."""
    return awaken_settings.WEBHOOK_TIMEOUT_MS + LEASE_MARGIN_MS


def _execute(statement: str, params: dict[str, Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return int(cursor.rowcount)


def claim(delivery_id: str, *, now: int) -> ClaimedDelivery | None:
    with connection.cursor() as cursor:
        params: dict[str, Any] = {
            "delivery_id": delivery_id,
            "now": now,
            "until": now + lease_ms(),
            "skew": CLOCK_SKEW_MS,
        }
        cursor.execute(CLAIM, params)
        row = cursor.fetchone()
    if row is None:
        return None
    url, event, payload, attempt, created_at, owner_id = row
    if isinstance(payload, str):  # Django's psycopg setup hands jsonb over as text
        payload = json.loads(payload)
    owner = None if owner_id is None else int(owner_id)
    return ClaimedDelivery(delivery_id, url, event, payload, int(attempt), int(created_at), owner)


def signers(claimed: ClaimedDelivery, *, now: int) -> tuple[list[str], bool]:
    """(the secrets that sign this attempt, whether it goes to the project's own AWAKEN_WEBHOOK_URL).

    A subscription's row: its owner's secrets, never the project's. A row without an owner: the project
    secret, but only when its URL is AWAKEN_WEBHOOK_URL — a user's URL is never signed with it."""
    if claimed.owner_id is not None:
        return secret_store.signing_secrets(claimed.owner_id, now=now), False
    default_url = awaken_settings.WEBHOOK_URL
    if default_url and claimed.url == default_url:
        project = awaken_settings.WEBHOOK_SECRET
        return ([project] if project else []), True
    return [], False


def headers_for(claimed: ClaimedDelivery, body: bytes, *, now: int) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        outbox.EVENT_HEADER: claimed.event,
        outbox.IDEMPOTENCY_HEADER: claimed.delivery_id,
        "X-Awaken-Attempt": str(claimed.attempt),
    }
    secrets, to_default_url = signers(claimed, now=now)
    headers |= signing.headers(secrets, claimed.delivery_id, now // 1000, body)
    if not secrets:
        headers[UNSIGNED_HEADER] = "no-secret"
    elif to_default_url:  # the project's own receiver may still check the legacy header
        headers[outbox.SIGNATURE_HEADER] = outbox.signature(body, secrets[0])
    return headers


def _send(claimed: ClaimedDelivery, deadline: transport.Deadline) -> tuple[int | None, str | None, bool]:
    """(status code, error, give up now) of one request, all of it by `deadline`."""
    body = outbox.body_of(claimed.delivery_id, claimed.event, claimed.created_at, claimed.payload)
    try:
        target = parse_target(claimed.url)
        addresses = resolve(
            target, allow_private=awaken_settings.WEBHOOK_ALLOW_PRIVATE, timeout_s=deadline.remaining()
        )
    except TargetRefused as exc:
        return None, f"refused: {exc}", True
    except (WebhookTargetError, transport.DeadlineExceeded) as exc:
        return None, str(exc), False
    headers = headers_for(claimed, body, now=now_ms())
    error = "no address"
    for address in addresses:
        try:
            answer = transport.post(target, address, body, headers, deadline)
        except transport.SendFailed as exc:
            error = str(exc)
            if exc.unreachable:
                continue  # the next address of the host, if any (the same deadline)
            return None, error, False
        if 200 <= answer.status < 300:
            return answer.status, None, False
        return answer.status, f"HTTP {answer.status}: {answer.detail}".strip(), False
    return None, error, False


def deliver(delivery_id: str) -> DeliveryOutcome:
    """One attempt at `delivery_id` (the Celery task). A failed attempt schedules the next one."""
    with tracing.span(tracing.WEBHOOK, {"awaken.delivery_id": delivery_id}) as current:
        outcome = _deliver(delivery_id)
        tracing.set_attributes(current, {"awaken.outcome": outcome.value})
        return outcome


def _deliver(delivery_id: str) -> DeliveryOutcome:
    claimed = claim(delivery_id, now=now_ms())
    if claimed is None:
        return DeliveryOutcome.SKIPPED
    deadline = transport.Deadline.after_ms(awaken_settings.WEBHOOK_TIMEOUT_MS)  # inside the lease
    started = time.perf_counter()
    code, error, give_up = _send(claimed, deadline)
    seconds = time.perf_counter() - started
    now = now_ms()
    params: dict[str, Any] = {
        "delivery_id": delivery_id,
        "attempt": claimed.attempt,
        "now": now,
        "code": code,
        "error": None if error is None else error[:ERROR_CHARS],
    }
    if error is None:
        _counted(_execute(DELIVERED, params), "delivered", seconds)
        return DeliveryOutcome.DELIVERED
    if give_up or claimed.attempt >= awaken_settings.WEBHOOK_MAX_ATTEMPTS:
        _counted(_execute(GAVE_UP, params), "refused" if give_up else "gave_up", seconds)
        log.warning("webhook %s gave up after %d attempts: %s", delivery_id, claimed.attempt, error)
        return DeliveryOutcome.GAVE_UP
    delay = backoff_ms(claimed.attempt)
    if _counted(_execute(RETRY, params | {"retry_at": now + delay}), "failed", seconds):
        outbox.ring(delivery_id, countdown_s=delay / 1000)
    return DeliveryOutcome.RETRY


def _counted(written: int, outcome: str, seconds: float) -> int:
    """Count the attempt once its outcome's write returned (autocommit: it is durable): by `outcome`,
    or `lost` when the fenced write matched nothing (the row was no longer this attempt's)."""
    metrics.record_webhook_attempt(outcome if written else "lost", seconds)
    return written


def redrive(*, now: int | None = None, limit: int = REDRIVE_BATCH) -> int:
    """Ring every due pending row nobody holds (the beat): rows whose ring was lost, whose worker died
    before or during the attempt, or whose delayed retry was dropped. Duplicate rings are harmless."""
    with connection.cursor() as cursor:
        cursor.execute(DUE, {"now": now_ms() if now is None else now, "limit": limit})
        due = [str(row[0]) for row in cursor.fetchall()]
    for delivery_id in due:
        outbox.ring(delivery_id)
    return len(due)


def retry_failed(delivery_ids: list[str]) -> list[str]:
    """Give failed rows a fresh round of attempts (the admin's action); rung when this commits."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(RETRY_FAILED, {"ids": delivery_ids, "now": now_ms()})
            retried = [str(row[0]) for row in cursor.fetchall()]
        outbox.ring_on_commit(retried)
    return retried


def purge_delivered(*, before: int) -> int:
    """Delete delivered rows older than `before`, PURGE_BATCH at a time, at most PURGE_MAX_BATCHES."""
    purged = 0
    for _ in range(PURGE_MAX_BATCHES):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(PURGE, {"before": before, "limit": PURGE_BATCH, "finished": outbox.EVENT_FINISHED})
            row = cursor.fetchone()
        count = int(row[0]) if row else 0
        purged += count
        if count < PURGE_BATCH:
            break
    return purged


def purge_on_gc(*, now: int, **_: Any) -> int:
    """The `maintenance.gc_ran` receiver: delivered rows live as long as terminal dispatches."""
    return purge_delivered(before=now - awaken_settings.MAILBOX.gc_ttl_ms)
