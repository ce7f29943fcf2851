"""Durable webhooks: the outbox row is written by the transaction that ends or suspends the run, a
Celery task delivers it (signed with the subscriber's secret, with an idempotency id, retried with
backoff, given up after a bound), the beat re-drives what nobody delivered, and non-public targets are
refused at submit and delivery.

A real receiver (`ThreadingHTTPServer` on loopback, hence AWAKEN_WEBHOOK_ALLOW_PRIVATE on), a real
in-process Celery worker consuming both queues, real PostgreSQL and Redis; the crash case runs the
Procfile's webhooks worker as a subprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailbox_app import store
from mailbox_app.agents.base import COMPLETED, RunResult
from mailbox_app.contract.config import MailboxConfig
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import WebhookDelivery, WebhookDeliveryStatus, WebhookSubscription
from mailbox_app.services import mailbox, maintenance
from mailbox_app.webhooks import delivery, outbox, secret_store, signing
from mailbox_app.webhooks.targets import TargetRefused, check_submitted, parse_target, resolve
from mailbox_app.worker import attempt
from runs_app import store as run_store
from tests.mailbox_app.webhooks.receivers import PROJECT_SECRET, Received, Receiver, start_procfile_worker
from tests.support.api import new_user, post_json, user_client
from tests.support.dispatches import FAST
from tests.support.waiting import wait_until
from tests.support.worker_farm import WorkerFarm

pytestmark = pytest.mark.django_db(transaction=True)


class HookedClient(APIClient):
    """An API client of a user who made a webhook signing secret (`secret`, shown once)."""

    secret: str
    user_id: int


def hooked_client(username: str) -> HookedClient:
    """A new user, a client authenticated as them, and their secret made through the API."""
    user = new_user(username)
    client = HookedClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    answer = post_json(client, "/api/v1/webhooks/secret", {})
    assert answer.status_code == 201, answer.json()
    client.secret = answer.json()["secret"]
    client.user_id = int(user.pk)
    return client


@pytest.fixture
def api(hook_worker: Any, hook_settings: Any) -> HookedClient:
    return hooked_client("hooked")


def _verifies(request: Received, secret: str) -> bool:
    return signing.verify(secret, request.headers, request.body, now_s=now_ms() // 1000)


def _rows(run_id: str) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(run_id=run_id).order_by("created_at", "delivery_id"))


def _delivered(run_id: str, count: int) -> list[WebhookDelivery]:
    def settled() -> list[WebhookDelivery]:
        rows = _rows(run_id)
        done = len(rows) == count and all(r.status == WebhookDeliveryStatus.DELIVERED for r in rows)
        return rows if done else []

    return wait_until(settled, timeout=20, what=f"{count} delivered webhook rows of {run_id}")


def _assert_exactly_once(receiver: Receiver, rows: list[WebhookDelivery]) -> None:
    """Each row was accepted once by the receiver, and nothing more arrives when the beat re-drives."""
    assert delivery.redrive() == 0
    accepted = receiver.accepted()
    assert sorted(r.headers["Idempotency-Key"] for r in accepted) == sorted(r.delivery_id for r in rows)


def _mailbox_submit(api: APIClient, thread_id: str, text: str, webhook: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if webhook is not None:
        body["webhook"] = webhook
    response = post_json(api, f"/api/v1/threads/{thread_id}/mailbox", body)
    assert response.status_code == 201, response.json()
    return dict(response.json())


def _subscribed_submit(
    thread_id: str, text: str, url: str, owner_id: int | None = None
) -> mailbox.SubmitResult:
    """A background submit and its webhook in one transaction, as the API writes them."""
    with transaction.atomic():
        submitted = mailbox.submit_background(
            RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)])
        )
        outbox.subscribe(submitted.run_id, url, owner_id=owner_id)
    return submitted


# --- delivery ----------------------------------------------------------------------------------------


def test_a_finished_run_is_delivered_exactly_once_when_the_first_attempt_gets_a_500(
    api: HookedClient, receiver: Receiver
) -> None:
    receiver.fail_next(500)
    submitted = _mailbox_submit(api, "t-hook-500", "hello", receiver.url())
    (row,) = _delivered(submitted["run_id"], 1)
    requests = receiver.requests()
    assert [r.answered for r in requests] == [500, 200] and row.attempts == 2
    assert row.event == outbox.EVENT_FINISHED and row.last_status_code == 200
    first, second = requests
    # the same body and idempotency id on every attempt; signed with the submitter's own secret
    assert first.body == second.body
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == row.delivery_id
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == row.delivery_id
    for request in requests:
        assert _verifies(request, api.secret)
        assert not _verifies(request, PROJECT_SECRET)
        assert "X-Awaken-Signature" not in request.headers  # the project's key signs no user URL
        assert "X-Awaken-Unsigned" not in request.headers
        assert request.headers["X-Awaken-Event"] == "run.finished" and request.path == "/hook"
    tampered = Received(second.path, second.headers, second.body + b" ", second.answered)
    assert not _verifies(tampered, api.secret)
    document = second.document
    detail = api.get(f"/api/v1/runs/{submitted['run_id']}").json()
    assert document["id"] == row.delivery_id and document["event"] == "run.finished"
    assert document["run"] == detail  # the shape the run detail route returns
    assert detail["status"] == "done" and detail["final_output"] == "echo: hello"
    _assert_exactly_once(receiver, [row])


def test_a_foreground_submit_delivers_its_webhook(api: APIClient, receiver: Receiver) -> None:
    response = post_json(
        api,
        "/api/v1/threads/t-hook-fg/runs",
        {"messages": [{"role": "user", "content": "hi"}], "webhook": receiver.url("/fg?x=1")},
    )
    assert response.status_code == 201, response.json()
    (row,) = _delivered(response.json()["run_id"], 1)
    (request,) = receiver.requests()
    assert request.path == "/fg?x=1" and request.document["run"]["final_output"] == "echo: hi"
    _assert_exactly_once(receiver, [row])


def test_a_suspended_run_delivers_waiting_then_the_decisions_finish(
    api: APIClient, receiver: Receiver
) -> None:
    submitted = _mailbox_submit(api, "t-hook-ask", "ask ok?", receiver.url())
    run_id = submitted["run_id"]
    (waiting,) = _delivered(run_id, 1)
    assert waiting.event == outbox.EVENT_WAITING
    (first,) = receiver.requests()
    assert first.document["event"] == "run.waiting" and first.document["run"]["status"] == "waiting"
    call_id = first.document["run"]["waiting"]["tickets"][0]["tool_call_id"]
    decided = post_json(
        api, f"/api/v1/runs/{run_id}/decision", {"tool_call_id": call_id, "action": "resume", "payload": 1}
    )
    assert decided.status_code == 202
    rows = _delivered(run_id, 2)
    assert [r.event for r in rows] == [outbox.EVENT_WAITING, outbox.EVENT_FINISHED]
    final = receiver.requests()[-1].document
    assert final["event"] == "run.finished" and final["run"]["final_output"] == "approved: 1"
    _assert_exactly_once(receiver, rows)


def test_the_default_url_is_called_for_a_run_cancelled_while_queued(
    api: HookedClient, receiver: Receiver, hook_settings: Any
) -> None:
    hook_settings.AWAKEN_WEBHOOK_URL = receiver.url("/default")
    running = _mailbox_submit(api, "t-hook-default", "sleep 10", None)
    queued = _mailbox_submit(api, "t-hook-default", "later", None)
    assert queued["status"] == "queued"
    assert post_json(api, f"/api/v1/dispatches/{queued['dispatch_id']}/cancel", {}).status_code == 202
    (row,) = _delivered(queued["run_id"], 1)
    (request,) = [r for r in receiver.requests() if r.headers["Idempotency-Key"] == row.delivery_id]
    assert request.path == "/default"
    # the project's own URL: the project secret signs it, in both schemes
    assert _verifies(request, PROJECT_SECRET) and not _verifies(request, api.secret)
    assert outbox.verify(request.body, request.headers["X-Awaken-Signature"], PROJECT_SECRET)
    assert request.document["run"]["termination_reason"] == {"type": "cancelled", "value": None}
    assert post_json(api, f"/api/v1/runs/{running['run_id']}/cancel", {}).status_code == 202
    _delivered(running["run_id"], 1)


def test_a_delivery_gives_up_after_the_bound_and_the_admin_retry_delivers_it(
    api: APIClient, receiver: Receiver, hook_settings: Any
) -> None:
    hook_settings.AWAKEN_WEBHOOK_MAX_ATTEMPTS = 3
    receiver.fail_next(503, 500, 502)
    submitted = _mailbox_submit(api, "t-hook-bound", "hello", receiver.url())

    def failed() -> WebhookDelivery | None:
        rows = _rows(submitted["run_id"])
        return rows[0] if rows and rows[0].status == WebhookDeliveryStatus.FAILED else None

    row = wait_until(failed, timeout=20, what="the delivery gave up")
    assert row.attempts == 3 and row.last_status_code == 502 and "HTTP 502" in (row.last_error or "")
    assert [r.answered for r in receiver.requests()] == [503, 500, 502]
    assert delivery.redrive() == 0  # a row that gave up is not re-driven
    assert delivery.retry_failed([row.delivery_id]) == [row.delivery_id]
    (again,) = _delivered(submitted["run_id"], 1)
    assert again.attempts == 1 and [r.answered for r in receiver.requests()] == [503, 500, 502, 200]
    _assert_exactly_once(receiver, [again])


def test_backoff_doubles_up_to_the_bound(hook_settings: Any) -> None:
    hook_settings.AWAKEN_WEBHOOK_RETRY_DELAY_MS = 1_000
    hook_settings.AWAKEN_WEBHOOK_MAX_RETRY_DELAY_MS = 10_000
    assert [delivery.backoff_ms(n) for n in range(1, 7)] == [1000, 2000, 4000, 8000, 10000, 10000]


# --- targets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.5.4/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
    ],
)
def test_a_private_target_is_refused_at_submit_when_the_setting_is_off(hook_settings: Any, url: str) -> None:
    hook_settings.AWAKEN_WEBHOOK_ALLOW_PRIVATE = False
    client = user_client("refused")
    for path in ("/api/v1/threads/t-private/mailbox", "/api/v1/threads/t-private/runs", "/api/v1/runs"):
        response = post_json(client, path, {"messages": [{"role": "user", "content": "x"}], "webhook": url})
        assert response.status_code == 400, response.json()
        assert response.json()["field"] == "webhook" and "non-public" in response.json()["error"]
    assert run_store.load_thread(thread_id="t-private") is None  # nothing was written


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("http://user:pw@example.com/", "credentials"),
        ("http:///nohost", "host"),
        ("http://example.com/a b", "spaces"),
        ("http://example.com:99999/", "valid URL"),
    ],
)
def test_a_malformed_webhook_is_a_400_naming_the_field(hook_settings: Any, url: str, problem: str) -> None:
    client = user_client("malformed")
    response = post_json(
        client,
        "/api/v1/threads/t-bad-url/mailbox",
        {"messages": [{"role": "user", "content": "x"}], "webhook": url},
    )
    assert response.status_code == 400 and response.json()["field"] == "webhook"
    assert problem in response.json()["error"]


def test_public_addresses_pass_and_private_ones_fail_without_dns() -> None:
    assert resolve(parse_target("https://93.184.216.34/x"), allow_private=False) == ["93.184.216.34"]
    assert check_submitted("http://[2606:4700::1111]/", allow_private=False) == "http://[2606:4700::1111]/"
    with pytest.raises(TargetRefused):
        resolve(parse_target("http://127.0.0.1/"), allow_private=False)
    assert resolve(parse_target("http://127.0.0.1/"), allow_private=True) == ["127.0.0.1"]


def test_a_target_that_resolves_private_at_delivery_is_refused_and_not_called(
    api: APIClient, receiver: Receiver, hook_settings: Any
) -> None:
    """DNS rebinding: the name passed at submit, and resolves to loopback when the delivery runs."""
    port = receiver.server.server_address[1]
    hook_settings.AWAKEN_WEBHOOK_ALLOW_PRIVATE = False
    subscribed = f"http://localhost:{port}/rebound"
    # as if the name had resolved to a public address at submit
    run = _subscribed_submit("t-rebind", "hi", subscribed)

    def gave_up() -> WebhookDelivery | None:
        rows = _rows(run.run_id)
        return rows[0] if rows and rows[0].status == WebhookDeliveryStatus.FAILED else None

    row = wait_until(gave_up, timeout=20, what="the delivery was refused")
    assert row.attempts == 1 and (row.last_error or "").startswith("refused:")
    assert receiver.requests() == []


# --- the outbox is part of the run's transactions ----------------------------------------------------


def test_an_attempt_that_lost_its_fence_writes_no_outbox_row(
    hook_settings: Any, clean_redis: Any, receiver: Receiver
) -> None:
    """A zombie's finish rolls back before anything: its result never reaches the outbox. The row
    that exists is the interrupt's (the run ended cancelled), written with the run's real end."""
    thread_id = "t-hook-zombie"
    submitted = _subscribed_submit(thread_id, "hi", receiver.url())
    claimed = store.load_dispatch(submitted.dispatch_id)
    assert claimed is not None and claimed.status is DispatchStatus.CLAIMED
    started = attempt.start(claimed, "instance-zombie", "zombie-node")
    assert isinstance(started, attempt.Started)
    mailbox.interrupt_detailed(thread_id)  # the claim is now stale (epoch bumped)
    reply = RunResult(final_output="zombie", messages=(ChatMessage.assistant("zombie"),))
    lost = attempt.finish(started, COMPLETED, reply, None, cancelled=False)
    assert isinstance(lost, attempt.Lost)
    rows = _rows(submitted.run_id)
    assert len(rows) == 1 and rows[0].event == outbox.EVENT_FINISHED
    assert rows[0].payload["final_output"] is None
    assert rows[0].payload["termination_reason"] == {"type": "cancelled", "value": None}
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.status is RunStatus.DONE and run.final_output is None


def test_a_rolled_back_end_leaves_no_row_and_rings_nothing(
    hook_settings: Any, clean_redis: Any, receiver: Receiver
) -> None:
    submitted = _subscribed_submit("t-hook-rb", "x", receiver.url())
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None
    done = run.model_copy(update={"status": RunStatus.DONE})
    with transaction.atomic():
        assert outbox.record_run_event(done) is not None
        transaction.set_rollback(True)
    assert _rows(submitted.run_id) == []
    assert outbox.record_run_event(run) is None  # a running run is no event


def test_gc_purges_delivered_rows_in_bounded_batches(
    hook_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "PURGE_BATCH", 3)
    monkeypatch.setattr(delivery, "PURGE_MAX_BATCHES", 2)
    old = now_ms() - hook_settings.AWAKEN_MAILBOX.gc_ttl_ms - 1_000

    def row(status: str, delivered_at: int | None, run_id: str, event: str = outbox.EVENT_FINISHED) -> None:
        WebhookDelivery.objects.create(
            delivery_id=uuid7(), run_id=run_id, thread_id="t-gc", event=event, url="http://x/", payload={},
            status=status, next_attempt_at=0, created_at=0, updated_at=0, delivered_at=delivered_at,
        )  # fmt: skip

    for k in range(8):
        row("delivered", old, f"run-old-{k}")
        WebhookSubscription.objects.create(run_id=f"run-old-{k}", url="http://x/", created_at=0)
    row("delivered", old, "run-waits", outbox.EVENT_WAITING)
    WebhookSubscription.objects.create(run_id="run-waits", url="http://x/", created_at=0)
    row("delivered", now_ms(), "run-recent")
    row("failed", None, "run-failed")
    row("pending", None, "run-pending")
    maintenance.gc()
    # one tick: at most 2 batches of 3
    assert WebhookDelivery.objects.filter(status="delivered", delivered_at=old).count() == 9 - 6
    maintenance.gc()
    left = set(WebhookDelivery.objects.values_list("run_id", flat=True))
    assert left == {"run-recent", "run-failed", "run-pending"}
    # subscriptions go with their run's delivered `run.finished`, not with a `run.waiting`
    assert set(WebhookSubscription.objects.values_list("run_id", flat=True)) == {"run-waits"}
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM mailbox_webhook_outbox")
        assert cursor.fetchone()[0] == 3


def test_a_dead_letter_by_the_sweep_writes_its_row_with_the_runs_end(
    hook_settings: Any, clean_redis: Any, receiver: Receiver
) -> None:
    """The sweep ends runs outside any transaction of its own: the run's end and its outbox row still
    commit together (one transaction), so a crash between them cannot lose the event."""
    hook_settings.AWAKEN_MAILBOX = MailboxConfig(
        lease_ms=FAST.lease_ms,
        lease_renewal_interval_ms=FAST.lease_renewal_interval_ms,
        default_max_attempts=1,
    )
    submitted = _subscribed_submit("t-hook-sweep", "hello", receiver.url())
    assert _rows(submitted.run_id) == []
    swept = maintenance.sweep(now=now_ms() + FAST.lease_ms + 1)
    assert swept.dead_lettered == 1
    (row,) = _rows(submitted.run_id)
    assert row.event == outbox.EVENT_FINISHED and row.payload["termination_reason"]["type"] == "error"
    assert delivery.deliver(row.delivery_id) is delivery.DeliveryOutcome.DELIVERED
    (request,) = receiver.requests()
    assert request.document["run"]["status"] == "done"


def test_an_attempt_that_died_mid_delivery_is_retried_after_its_lease_and_cannot_write_later(
    hook_settings: Any, clean_redis: Any, receiver: Receiver
) -> None:
    """A worker killed while it held a row (mid-request) leaves it pending and locked; once the lease
    is past, the re-drive delivers it, and the dead attempt's late outcome (its fence) changes nothing."""
    submitted = _subscribed_submit("t-hook-lease", "x", receiver.url())
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None
    with transaction.atomic():
        delivery_id = outbox.record_run_event(run.model_copy(update={"status": RunStatus.DONE}))
    assert delivery_id is not None
    dead = delivery.claim(delivery_id, now=now_ms())
    assert dead is not None and dead.attempt == 1
    assert delivery.redrive() == 0  # held by the (dead) attempt
    assert delivery.deliver(delivery_id) is delivery.DeliveryOutcome.SKIPPED
    WebhookDelivery.objects.filter(delivery_id=delivery_id).update(locked_until=now_ms() - 1)  # lease over
    assert delivery.redrive() == 1
    assert delivery.deliver(delivery_id) is delivery.DeliveryOutcome.DELIVERED
    stale: dict[str, Any] = {
        "delivery_id": delivery_id,
        "attempt": dead.attempt,
        "now": now_ms(),
        "code": 500,
        "error": "late",
    }
    with connection.cursor() as cursor:
        cursor.execute(delivery.GAVE_UP, stale)
        assert cursor.rowcount == 0
    row = WebhookDelivery.objects.get(delivery_id=delivery_id)
    assert row.status == WebhookDeliveryStatus.DELIVERED and row.attempts == 2
    assert len(receiver.requests()) == 1


def test_the_admin_lists_deliveries_and_retries_failed_ones(
    hook_settings: Any, clean_redis: Any, receiver: Receiver, django_user_model: Any
) -> None:
    hook_settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    hook_settings.AWAKEN_WEBHOOK_MAX_ATTEMPTS = 1
    receiver.fail_next(500)
    submitted = _subscribed_submit("t-hook-admin", "x", receiver.url())
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None
    with transaction.atomic():
        failing = outbox.record_run_event(run.model_copy(update={"status": RunStatus.DONE}))
        other = outbox.record_run_event(run.model_copy(update={"status": RunStatus.WAITING}))
    assert failing is not None and other is not None
    assert delivery.deliver(failing) is delivery.DeliveryOutcome.GAVE_UP
    assert delivery.deliver(other) is delivery.DeliveryOutcome.DELIVERED
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    changelist = reverse("admin:mailbox_app_webhookdelivery_changelist")
    page = client.get(changelist, {"status": "failed"})
    assert page.status_code == 200 and failing in page.content.decode() and other not in page.content.decode()
    detail = client.get(reverse("admin:mailbox_app_webhookdelivery_change", args=[failing]))
    assert detail.status_code == 200 and "HTTP 500" in detail.content.decode()
    response = client.post(  # as the action's confirmation page posts it (mailbox_app/admin/confirm.py)
        changelist,
        {"action": "retry_delivery", "_selected_action": [failing, other], "post": "yes"},
        follow=True,
    )
    assert response.status_code == 200
    text = response.content.decode()
    assert "Retrying 1 failed webhook delivery" in text and "not failed" in text
    (row,) = [r for r in _rows(submitted.run_id) if r.delivery_id == failing]
    assert row.status == WebhookDeliveryStatus.PENDING and row.attempts == 0


# --- a worker killed between the run's end and the delivery ------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_after_the_run_ended_before_delivery_still_delivers(
    farm: WorkerFarm,
    mp_settings: Any,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """The worker exits (os._exit, like kill -9) right after the finish transaction committed, before
    the delivery task was rung; the beat's re-drive makes the Procfile's webhooks worker deliver it,
    once, signed with the subscriber's secret."""
    mp_settings.AWAKEN_WEBHOOK_ALLOW_PRIVATE = True
    mp_settings.AWAKEN_WEBHOOK_SECRET = PROJECT_SECRET
    farm.env |= {"AWAKEN_WEBHOOK_ALLOW_PRIVATE": "1", "AWAKEN_WEBHOOK_SECRET": PROJECT_SECRET}
    owner = new_user("killed-hook")
    secret = secret_store.issue(owner.pk).secret
    doomed = farm.start("w-doomed", pool="solo", fault=outbox.FAULT_BEFORE_DELIVERY)
    submitted = _subscribed_submit("t-hook-kill", "hi", receiver.url(), owner_id=owner.pk)
    wait_until(lambda: not doomed.alive(), timeout=30, what="the worker died after the finish")
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.status is RunStatus.DONE and run.final_output == "echo: hi"
    (row,) = _rows(submitted.run_id)
    assert row.status == WebhookDeliveryStatus.PENDING and row.attempts == 0
    assert receiver.requests() == []
    start_procfile_worker(farm, "webhooks", "webhooks", tmp_path / "metrics")
    assert delivery.redrive() == 1  # what the beat does
    (delivered,) = _delivered(submitted.run_id, 1)
    (request,) = receiver.requests()
    assert request.headers["Idempotency-Key"] == delivered.delivery_id
    assert _verifies(request, secret) and not _verifies(request, PROJECT_SECRET)
    assert delivery.redrive() == 0
