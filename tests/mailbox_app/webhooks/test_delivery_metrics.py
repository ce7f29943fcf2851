"""Webhook delivery metrics: `mailbox_webhook_attempts_total{outcome}` and
`mailbox_webhook_attempt_duration_seconds{outcome}` move once per attempt, by the outcome the attempt
wrote, as a scrape of `GET /metrics` (multiprocess mode, this process's files) reads them.

Real receivers on loopback (AWAKEN_WEBHOOK_ALLOW_PRIVATE on), real PostgreSQL and Redis; the delivered
and the given-up cases run the run and its deliveries on a real Celery worker (`hook_worker`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import WebhookDelivery, WebhookDeliveryStatus
from mailbox_app.observability import metrics
from mailbox_app.services import mailbox
from mailbox_app.webhooks import delivery, outbox
from runs_app import store as run_store
from tests.mailbox_app.observability.test_metrics import Figures, figure, moved, scrape
from tests.mailbox_app.webhooks.receivers import Receiver
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ATTEMPTS = "mailbox_webhook_attempts_total"
DURATION = "mailbox_webhook_attempt_duration_seconds"


def attempts_moved(before: Figures, after: Figures) -> dict[str, float]:
    """How far each outcome's attempt count moved (every outcome, zeros included)."""
    return {name: moved(before, after, ATTEMPTS, outcome=name) for name in metrics.WEBHOOK_OUTCOMES}


def subscribed_run(thread_id: str, url: str) -> str:
    """A background submit with its webhook, as the API writes them; the run's id."""
    with transaction.atomic():
        submitted = mailbox.submit_background(
            RunRequest(thread_id=thread_id, messages=[ChatMessage.user("hi")])
        )
        outbox.subscribe(submitted.run_id, url)
    return submitted.run_id


def outbox_row(thread_id: str, url: str) -> str:
    """An outbox row of a run's end, to `url`, without running the run (no worker consumes its ring)."""
    run = run_store.load_run(run_id=subscribed_run(thread_id, url))
    assert run is not None
    with transaction.atomic():
        delivery_id = outbox.record_run_event(run.model_copy(update={"status": RunStatus.DONE}))
    assert delivery_id is not None
    return delivery_id


def settled_row(run_id: str, status: WebhookDeliveryStatus) -> WebhookDelivery:
    def found() -> WebhookDelivery | None:
        rows = list(WebhookDelivery.objects.filter(run_id=run_id))
        return rows[0] if len(rows) == 1 and rows[0].status == status else None

    row = wait_until(found, timeout=30, what=f"the webhook row of {run_id} {status}")
    assert row is not None
    return row


def test_a_delivered_attempt_counts_once_as_delivered_with_its_duration(
    hook_worker: Any, hook_settings: Any, receiver: Receiver
) -> None:
    scraper = Client()
    before = scrape(scraper)
    run_id = subscribed_run("t-whm-ok", receiver.url())
    row = settled_row(run_id, WebhookDeliveryStatus.DELIVERED)
    # the worker counts right after the outcome's write commits: wait for the figure, then compare
    wait_until(
        lambda: moved(before, scrape(scraper), ATTEMPTS, outcome="delivered") >= 1,
        timeout=10,
        what="the delivered attempt in a scrape",
    )
    after = scrape(scraper)
    assert row.attempts == 1 and len(receiver.accepted()) == 1
    assert attempts_moved(before, after) == {
        "delivered": 1,
        "failed": 0,
        "gave_up": 0,
        "refused": 0,
        "lost": 0,
    }
    assert moved(before, after, f"{DURATION}_count", outcome="delivered") == 1
    assert moved(before, after, f"{DURATION}_bucket", outcome="delivered", le="+Inf") == 1
    took = moved(before, after, f"{DURATION}_sum", outcome="delivered")
    assert 0 < took < hook_settings.AWAKEN_WEBHOOK_TIMEOUT_MS / 1000


def test_a_failing_receiver_counts_a_failed_attempt_then_one_given_up(
    hook_worker: Any, hook_settings: Any, receiver: Receiver
) -> None:
    hook_settings.AWAKEN_WEBHOOK_MAX_ATTEMPTS = 2
    receiver.fail_next(500, 503)
    scraper = Client()
    before = scrape(scraper)
    run_id = subscribed_run("t-whm-fail", receiver.url())
    row = settled_row(run_id, WebhookDeliveryStatus.FAILED)
    wait_until(
        lambda: moved(before, scrape(scraper), ATTEMPTS, outcome="gave_up") >= 1,
        timeout=10,
        what="the given-up attempt in a scrape",
    )
    after = scrape(scraper)
    assert row.attempts == 2 and [r.answered for r in receiver.requests()] == [500, 503]
    assert attempts_moved(before, after) == {
        "delivered": 0,
        "failed": 1,
        "gave_up": 1,
        "refused": 0,
        "lost": 0,
    }
    for outcome in ("failed", "gave_up"):
        assert moved(before, after, f"{DURATION}_count", outcome=outcome) == 1, outcome


def test_a_refused_target_counts_as_refused_and_is_not_called(
    hook_settings: Any, clean_redis: Any, receiver: Receiver
) -> None:
    hook_settings.AWAKEN_WEBHOOK_ALLOW_PRIVATE = False  # the loopback receiver is now a forbidden target
    delivery_id = outbox_row("t-whm-refused", receiver.url())
    scraper = Client()
    before = scrape(scraper)
    assert delivery.deliver(delivery_id) is delivery.DeliveryOutcome.GAVE_UP
    after = scrape(scraper)
    assert attempts_moved(before, after) == {
        "delivered": 0,
        "failed": 0,
        "gave_up": 0,
        "refused": 1,
        "lost": 0,
    }
    assert receiver.requests() == []
    # a row settled is no attempt: a second ring claims nothing and counts nothing
    assert delivery.deliver(delivery_id) is delivery.DeliveryOutcome.SKIPPED
    assert attempts_moved(after, scrape(scraper)) == dict.fromkeys(metrics.WEBHOOK_OUTCOMES, 0)


class _HookedReceiver:
    """A loopback receiver that runs `on_request` (in its handler thread) before answering 200."""

    def __init__(self, on_request: Callable[[], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                on_request()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def taken_over() -> Iterator[tuple[_HookedReceiver, list[str], list[int]]]:
    """A receiver that, while the attempt waits for its answer, lets the row's lease pass and a second
    attempt claim it (as the re-drive does after a paused worker's lease ran out), then answers 200.
    The test puts the row's id in the first list; the second gets the second attempt's number."""
    row: list[str] = []
    second: list[int] = []

    def take_over() -> None:
        try:
            WebhookDelivery.objects.filter(delivery_id=row[0]).update(locked_until=now_ms() - 1)
            claimed = delivery.claim(row[0], now=now_ms())
            second.append(0 if claimed is None else claimed.attempt)
        finally:
            connection.close()  # this handler thread's own connection

    server = _HookedReceiver(take_over)
    yield server, row, second
    server.close()


def test_an_attempt_whose_row_was_taken_over_mid_request_counts_as_lost(
    hook_settings: Any, clean_redis: Any, taken_over: tuple[_HookedReceiver, list[str], list[int]]
) -> None:
    """The receiver answered 2xx, but the attempt's fenced write finds the row another attempt's: the
    attempt is `lost`, not `delivered` (the row is still pending; the second attempt delivers it)."""
    server, row, second = taken_over
    delivery_id = outbox_row("t-whm-lost", server.url())
    row.append(delivery_id)
    scraper = Client()
    before = scrape(scraper)
    delivery.deliver(delivery_id)
    after = scrape(scraper)
    assert second == [2]
    stored = WebhookDelivery.objects.get(delivery_id=delivery_id)
    assert stored.status == WebhookDeliveryStatus.PENDING and stored.attempts == 2
    assert attempts_moved(before, after) == {
        "delivered": 0,
        "failed": 0,
        "gave_up": 0,
        "refused": 0,
        "lost": 1,
    }
    assert moved(before, after, f"{DURATION}_count", outcome="lost") == 1
    assert figure(after, f"{DURATION}_count", outcome="delivered") == figure(
        before, f"{DURATION}_count", outcome="delivered"
    )
