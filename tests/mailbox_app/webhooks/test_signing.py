"""A signing secret per subscriber: each user's deliveries are signed with that user's secret (Standard
Webhooks), so no user can produce — or verify — another user's signature; the project secret signs only
the project's own URL; a secret is shown once, rotates with a grace, and never appears in a later read,
log or admin page; concurrent rotations each get their own secret.

A real receiver on loopback, a real in-process Celery worker (consuming the webhook queue), real
PostgreSQL; the Standard Webhooks reference library plays the receiver's side."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import WebhookDelivery, WebhookDeliveryStatus, WebhookSecret, WebhookSubscription
from mailbox_app.services import mailbox
from mailbox_app.webhooks import delivery, outbox, secret_store, signing
from runs_app import store as run_store
from tests.mailbox_app.webhooks.receivers import PROJECT_SECRET, Received, Receiver
from tests.support.api import new_user, post_json
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

SECRET_ROUTE = "/api/v1/webhooks/secret"
SUBMIT_ROUTES = ("/api/v1/threads/{t}/mailbox", "/api/v1/threads/{t}/runs", "/api/v1/runs")


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def _issue(client: APIClient, **body: Any) -> str:
    answer = post_json(client, SECRET_ROUTE, body)
    assert answer.status_code == 201, answer.json()
    return str(answer.json()["secret"])


def _verifies(request: Received, secret: str) -> bool:
    return signing.verify(secret, request.headers, request.body, now_s=now_ms() // 1000)


def _library_verifies(request: Received, secret: str) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


def _row(url: str, owner_id: int | None, thread_id: str) -> str:
    """A finished run's committed outbox row for `url`, subscribed by `owner_id` (None: no
    subscription at all — the default URL's row)."""
    with transaction.atomic():
        submitted = mailbox.submit_background(
            RunRequest(thread_id=thread_id, messages=[ChatMessage.user("x")])
        )
        if owner_id is not None or url:
            outbox.subscribe(submitted.run_id, url, owner_id=owner_id)
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None
    with transaction.atomic():
        delivery_id = outbox.record_run_event(run.model_copy(update={"status": RunStatus.DONE}))
    assert delivery_id is not None
    return delivery_id


def _delivered_request(receiver: Receiver, delivery_id: str) -> Received:
    assert delivery.deliver(delivery_id) is delivery.DeliveryOutcome.DELIVERED
    (request,) = [r for r in receiver.requests() if r.headers["webhook-id"] == delivery_id]
    return request


# --- whose key signs what -----------------------------------------------------------------------------


def test_user_a_deliveries_cannot_be_verified_with_user_b_secret(
    hook_worker: Any, hook_settings: Any, receiver: Receiver
) -> None:
    """Two users, one receiver URL each, end to end through the API and the worker."""
    alice, bob = _client(new_user("alice")), _client(new_user("bob"))
    secrets = {"alice": _issue(alice), "bob": _issue(bob)}
    assert secrets["alice"] != secrets["bob"]
    for name, client in (("alice", alice), ("bob", bob)):
        body = {"messages": [{"role": "user", "content": name}], "webhook": receiver.url(f"/{name}")}
        assert post_json(client, f"/api/v1/threads/t-sign-{name}/mailbox", body).status_code == 201

    def both() -> dict[str, Received] | None:
        got = {r.path.strip("/"): r for r in receiver.requests()}
        return got if set(got) == {"alice", "bob"} else None

    requests = wait_until(both, timeout=20, what="both users' deliveries")
    assert requests is not None
    for owner, other in (("alice", "bob"), ("bob", "alice")):
        request = requests[owner]
        assert request.document["run"]["final_output"] == f"echo: {owner}"
        assert _verifies(request, secrets[owner]) and _library_verifies(request, secrets[owner])
        assert not _verifies(request, secrets[other]) and not _library_verifies(request, secrets[other])
        assert not _verifies(request, PROJECT_SECRET)
        assert "X-Awaken-Signature" not in request.headers and "X-Awaken-Unsigned" not in request.headers
        # a body swapped between users does not verify under the other's headers either
        swapped = Received(request.path, request.headers, requests[other].body, request.answered)
        assert not _verifies(swapped, secrets[owner]) and not _verifies(swapped, secrets[other])


def test_the_project_secret_signs_only_the_project_url(
    hook_settings: Any, clean_redis: Any, receiver: Receiver
) -> None:
    hook_settings.AWAKEN_WEBHOOK_URL = receiver.url("/default")
    user = new_user("carol")
    carol_secret = secret_store.issue(user.pk).secret
    # the default URL (no subscription): the project secret, in both schemes
    default = _delivered_request(receiver, _row("", None, "t-proj-default"))
    assert default.path == "/default" and _verifies(default, PROJECT_SECRET)
    assert outbox.verify(default.body, default.headers["X-Awaken-Signature"], PROJECT_SECRET)
    # a user's subscription, even to the very same URL: the user's secret, never the project's
    same_url = _delivered_request(receiver, _row(receiver.url("/default"), user.pk, "t-proj-same"))
    assert _verifies(same_url, carol_secret) and not _verifies(same_url, PROJECT_SECRET)
    assert "X-Awaken-Signature" not in same_url.headers
    # a subscription with no owner (written before subscribers had secrets): unsigned, and says so
    orphan = _delivered_request(receiver, _row(receiver.url("/orphan"), None, "t-proj-orphan"))
    assert "webhook-signature" not in orphan.headers and "X-Awaken-Signature" not in orphan.headers
    assert orphan.headers["X-Awaken-Unsigned"] == "no-secret" and orphan.headers["webhook-id"]


def test_a_rotation_signs_with_both_secrets_until_its_grace_ends_and_a_revocation_at_once(
    hook_settings: Any, clean_redis: Any, receiver: Receiver
) -> None:
    user = new_user("dave")
    client = _client(user)
    first = _issue(client)
    second = _issue(client, previous_valid_for_s=3600)
    assert second != first
    info = client.get(SECRET_ROUTE).json()
    assert info["previous_valid_until"] is not None
    rotated = _delivered_request(receiver, _row(receiver.url(), user.pk, "t-rot-1"))
    assert len(rotated.headers["webhook-signature"].split(" ")) == 2
    assert _verifies(rotated, first) and _verifies(rotated, second)  # receivers switch at leisure
    assert _library_verifies(rotated, first) and _library_verifies(rotated, second)
    # the grace ends: only the current secret signs
    now = now_ms()
    assert secret_store.signing_secrets(user.pk, now=now + 3_600_001) == [second]
    # revoked at once (a leaked secret): the previous one stops signing now
    third = _issue(client, previous_valid_for_s=0)
    assert client.get(SECRET_ROUTE).json()["previous_valid_until"] is None
    revoked = _delivered_request(receiver, _row(receiver.url(), user.pk, "t-rot-2"))
    assert len(revoked.headers["webhook-signature"].split(" ")) == 1
    assert _verifies(revoked, third) and not _verifies(revoked, second) and not _verifies(revoked, first)


def test_a_replayed_delivery_is_refused_by_the_receivers_timestamp_check(
    hook_settings: Any, clean_redis: Any, receiver: Receiver
) -> None:
    user = new_user("erin")
    secret = secret_store.issue(user.pk).secret
    request = _delivered_request(receiver, _row(receiver.url(), user.pk, "t-replay"))
    sent_at = int(request.headers["webhook-timestamp"])
    assert signing.verify(secret, request.headers, request.body, now_s=sent_at + 299)
    assert not signing.verify(secret, request.headers, request.body, now_s=sent_at + 301)
    # moving the timestamp breaks the signature (it is signed)
    moved = {**request.headers, "webhook-timestamp": str(sent_at + 300)}
    assert not signing.verify(secret, moved, request.body, now_s=sent_at + 300)


# --- the secret routes ----------------------------------------------------------------------------------


def test_the_secret_is_shown_once_and_never_in_a_later_read_log_or_admin_page(
    hook_settings: Any,
    clean_redis: Any,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    django_user_model: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    user = new_user("frank")
    client = _client(user)
    assert client.get(SECRET_ROUTE).status_code == 404
    assert client.get(SECRET_ROUTE).json()["code"] == "webhook_secret_not_found"
    created = post_json(client, SECRET_ROUTE, {})
    assert created.status_code == 201 and created["Cache-Control"] == "no-store"
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("whsec_") and len(signing.key_of(secret)) == 32
    assert (
        set(body) == {"secret", "created_at", "previous_valid_until"} and body["previous_valid_until"] is None
    )
    read = client.get(SECRET_ROUTE)
    assert read.status_code == 200 and set(read.json()) == {"created_at", "previous_valid_until"}
    assert secret not in read.content.decode()
    # a delivery signed with it (the worker's log lines included) and the admin's pages
    failing = _row(receiver.url(), user.pk, "t-shown-once")
    receiver.fail_next(500)
    hook_settings.AWAKEN_WEBHOOK_MAX_ATTEMPTS = 1
    assert delivery.deliver(failing) is delivery.DeliveryOutcome.GAVE_UP
    hook_settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    admin = Client()
    admin.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    pages = [
        admin.get(reverse("admin:index")),
        admin.get(reverse("admin:mailbox_app_webhookdelivery_changelist")),
        admin.get(reverse("admin:mailbox_app_webhookdelivery_change", args=[failing])),
    ]
    assert all(p.status_code == 200 for p in pages)
    key = secret.removeprefix("whsec_")
    for page in pages:
        assert key not in page.content.decode()
    assert "webhook secret" not in pages[0].content.decode().lower()  # not registered in the admin
    row = WebhookDelivery.objects.get(delivery_id=failing)
    assert row.status == WebhookDeliveryStatus.FAILED and key not in (row.last_error or "")
    assert key not in caplog.text and key not in json.dumps(row.payload)
    assert str(WebhookSecret.objects.get(pk=user.pk)) == f"webhook secret of user {user.pk}"


def _secret_info_of(user: Any) -> dict[str, Any]:
    return dict(_client(user).get(SECRET_ROUTE).json())


def test_the_secret_routes_answer_401_without_credentials(hook_settings: Any) -> None:
    anonymous = APIClient()
    assert anonymous.get(SECRET_ROUTE).status_code == 401
    assert post_json(anonymous, SECRET_ROUTE, {}).status_code == 401
    assert WebhookSecret.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"previous_valid_for_s": -1}, "previous_valid_for_s"),
        ({"previous_valid_for_s": 7 * 86_400 + 1}, "previous_valid_for_s"),
        ({"previous_valid_for_s": "soon"}, "previous_valid_for_s"),
        ({"previous_valid_for_s": 1.5}, "previous_valid_for_s"),
        ({"previous_valid_for_s": None}, "previous_valid_for_s"),
        ({"previous_valid_for_s": 10**30}, "previous_valid_for_s"),
        ([], None),
        ("secret", None),
    ],
)
def test_a_malformed_secret_request_is_a_400_naming_the_field(
    hook_settings: Any, body: Any, field: str | None
) -> None:
    user = new_user("grace")
    client = _client(user)
    answer = post_json(client, SECRET_ROUTE, body)
    assert answer.status_code == 400, answer.content
    assert answer.json().get("field") == field
    assert not secret_store.has_secret(user.pk)


def test_another_users_id_in_the_body_changes_nothing_of_theirs(hook_settings: Any) -> None:
    victim, attacker = new_user("victim"), new_user("attacker")
    victim_secret = secret_store.issue(victim.pk).secret
    before = secret_store.describe(victim.pk)
    client = _client(attacker)
    for body in ({"user_id": victim.pk}, {"user": victim.pk, "owner_id": victim.pk}):
        assert post_json(client, SECRET_ROUTE, body).status_code == 201
    assert secret_store.describe(victim.pk) == before
    assert secret_store.signing_secrets(victim.pk, now=now_ms()) == [victim_secret]
    # a query parameter names no one: the answer is the caller's own
    assert client.get(f"{SECRET_ROUTE}?user_id={victim.pk}").json() == client.get(SECRET_ROUTE).json()
    assert client.get(SECRET_ROUTE).json()["created_at"] != _secret_info_of(victim)["created_at"]
    assert client.get(f"/api/v1/webhooks/secret/{victim.pk}").status_code == 404


def test_a_submit_naming_a_webhook_needs_the_callers_secret_and_writes_nothing_without(
    hook_settings: Any, clean_redis: Any, receiver: Receiver
) -> None:
    user = new_user("henry")
    client = _client(user)
    for route in SUBMIT_ROUTES:
        thread_id = f"t-nosecret-{route.count('/')}-{len(route)}"
        body = {"messages": [{"role": "user", "content": "x"}], "webhook": receiver.url()}
        if "{t}" not in route:
            body["thread_id"] = thread_id
        answer = post_json(client, route.format(t=thread_id), body)
        assert answer.status_code == 400, answer.json()
        assert answer.json()["field"] == "webhook" and answer.json()["code"] == "webhook_secret_required"
        assert "POST /api/v1/webhooks/secret" in answer.json()["error"]
        assert run_store.load_thread(thread_id=thread_id) is None
    # without a webhook the same user submits as before; with a secret, with one too
    plain = {"messages": [{"role": "user", "content": "x"}]}
    assert post_json(client, "/api/v1/threads/t-nohook/mailbox", plain).status_code == 201
    _issue(client)
    body = {"messages": [{"role": "user", "content": "x"}], "webhook": receiver.url()}
    answer = post_json(client, "/api/v1/threads/t-withsecret/mailbox", body)
    assert answer.status_code == 201
    # the subscription carries its owner, whose secret will sign the deliveries
    assert WebhookSubscription.objects.get(run_id=answer.json()["run_id"]).owner_id == user.pk


# --- a race: rotations at once ------------------------------------------------------------------------


def test_concurrent_rotations_each_get_their_own_secret_and_leave_one_current_one_previous(
    hook_settings: Any,
) -> None:
    """Eight rotations of one user's secret at once, starting with none (concurrent first inserts):
    the upsert serializes them on the user's row, none fails, each caller gets a distinct secret, and
    the row ends with one of them current and another as the previous one."""
    user = new_user("racer")
    callers = 8
    barrier = threading.Barrier(callers)
    issued: list[str] = []
    lock = threading.Lock()

    def rotate() -> None:  # an exception here fails the test (pytest reports a thread's exception)
        try:
            barrier.wait(10)
            secret = secret_store.issue(user.pk, grace_ms=60_000).secret
            with lock:
                issued.append(secret)
        finally:
            connection.close()

    threads = [threading.Thread(target=rotate) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(issued) == callers == len(set(issued))
    current, previous = secret_store.signing_secrets(user.pk, now=now_ms())
    assert current in issued and previous in issued and current != previous
    assert WebhookSecret.objects.filter(pk=user.pk).count() == 1


def test_a_deleted_users_secret_goes_with_them(hook_settings: Any) -> None:
    user = new_user("leaving")
    secret_store.issue(user.pk)
    user.delete()
    assert WebhookSecret.objects.count() == 0 and not secret_store.has_secret(user.pk)
