"""Idempotency keys give exactly once (issue 8, item 4): the key row and its answer commit with the
submit, a broker outage still answers 201 and a retry replays it, an action that fails leaves no key,
a dead holder never leaves a key stuck, keys expire and are purged by GC, /messages and /inputs replay."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connections, transaction
from kombu.exceptions import OperationalError
from rest_framework.test import APIClient

from awaken_project.celery import app as celery_app
from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.models import Dispatch
from mailbox_app.realtime import doorbells
from mailbox_app.services import maintenance
from mailbox_app.worker.execution import drain_thread
from runs_app import store as run_store
from runs_app.api import idempotency
from runs_app.models import IdempotencyRecord, Message, Run
from tests.support.api import new_user, post_json, token_client

MSG = [{"role": "user", "content": "hello"}]


def _user_and_client(username: str) -> tuple[int, APIClient]:
    user = new_user(username)
    return int(user.pk), token_client(user)


def _post(client: APIClient, path: str, data: Any, **extra: Any) -> Any:
    return post_json(client, path, data, **extra)


def _counts(thread_id: str) -> tuple[int, int, int]:
    return (
        Message.objects.filter(thread_id=thread_id).count(),
        Run.objects.filter(thread_id=thread_id).count(),
        Dispatch.objects.filter(thread_id=thread_id).count(),
    )


# --- a broker outage: 201, then the retry replays, and the dispatch runs once a worker is there --------


class _Broker:
    """The Celery app's `send_task`: down (raises kombu's OperationalError, what a dead Redis broker
    raises) or up (the doorbells are kept, to be delivered to an in-process worker)."""

    def __init__(self) -> None:
        self.down = True
        self.sent: list[tuple[str, list[Any]]] = []
        self.refused = 0

    def send_task(self, name: str, args: list[Any] | None = None, **_: Any) -> None:
        if self.down:
            self.refused += 1
            raise OperationalError("Error 111 connecting to redis: Connection refused.")
        self.sent.append((name, list(args or [])))


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> _Broker:
    fake = _Broker()
    monkeypatch.setattr(celery_app, "send_task", fake.send_task)
    return fake


@pytest.fixture
def live_client(transactional_db: None, clean_redis: redis.Redis) -> Iterator[APIClient]:
    """Real commits (on-commit doorbells fire), a clean Redis for the in-process worker's lock/events."""
    yield _user_and_client("erin")[1]


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/api/v1/threads/t-outage/mailbox", {}), ("/api/v1/threads/t-outage/runs", {})],
    ids=["background", "foreground"],
)
def test_broker_down_answers_201_and_the_retry_replays_one_dispatch_that_runs(
    live_client: APIClient, broker: _Broker, path: str, extra: dict[str, Any]
) -> None:
    first = _post(live_client, path, {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="outage-1")
    assert first.status_code == 201, first.content
    assert broker.refused == 1, "the hand-over doorbell was tried and failed"
    assert IdempotencyRecord.objects.get(key="outage-1").response == first.json()

    broker.down = False  # Redis is back
    again = _post(live_client, path, {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="outage-1")
    assert again.status_code == 201 and again.json() == first.json()
    assert broker.sent == [], "a replay submits nothing and rings nothing"
    assert _counts("t-outage") == (1, 1, 1)

    # The lost hand-over: the inline claim's lease runs out, the sweep requeues it and rings the thread.
    body = first.json()
    report = maintenance.sweep(now=now_ms() + 10 * 60_000)
    assert report.reclaimed == 1 and broker.sent == [(doorbells.DISPATCH_TASK, ["t-outage", None])]
    if path.endswith("/runs"):
        # A foreground claim is guarded for INLINE_CLAIM_GUARD_MS: it becomes claimable after that
        # (real time this test does not wait for); what matters is that it is queued once, not lost.
        requeued = store.load_dispatch(body["dispatch_id"])
        assert requeued is not None and requeued.status is DispatchStatus.QUEUED
        return
    drain_thread("t-outage")  # the worker that hears the doorbell
    dispatch = store.load_dispatch(body["dispatch_id"])
    assert dispatch is not None and dispatch.status is DispatchStatus.ACKED
    run = run_store.load_run(run_id=body["run_id"])
    assert run is not None and run.status is RunStatus.DONE
    assert _counts("t-outage") == (2, 1, 1)  # the user message and the one answer
    contents = [m.text for m in run_store.load_messages(thread_id="t-outage") or []]
    assert contents == ["hello", "echo: hello"]


def test_a_failure_after_the_commit_answers_the_stored_reply(
    live_client: APIClient, broker: _Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only the (already best-effort) doorbell: anything raising once the submit committed."""

    def broken_send(name: str, args: list[Any], countdown_s: float | None = None) -> None:
        raise RuntimeError("an on-commit hook failed")

    monkeypatch.setattr(doorbells, "send_doorbell", broken_send)
    resp = _post(
        live_client, "/api/v1/threads/t-late/mailbox", {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="late-1"
    )
    assert resp.status_code == 201, resp.content
    assert IdempotencyRecord.objects.get(key="late-1").response == resp.json()
    assert _counts("t-late") == (1, 1, 1)


# --- an action that fails leaves no key; a retry runs it once ------------------------------------------


def test_an_action_that_raises_after_the_key_row_leaves_no_key(
    alice: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = idempotency.KeyRecorder.__call__
    failures = iter([True])

    def record_then_fail(self: Any, status_code: int, data: dict[str, Any]) -> None:
        original(self, status_code, data)
        assert IdempotencyRecord.objects.filter(key="boom").exists()  # written, not yet committed
        if next(failures, False):
            raise RuntimeError("the process fails inside the submit's transaction")

    monkeypatch.setattr(idempotency.KeyRecorder, "__call__", record_then_fail)
    alice.raise_request_exception = False
    failed = _post(alice, "/api/v1/threads/t-boom/mailbox", {"messages": MSG, "idempotency_key": "boom"})
    assert failed.status_code == 500
    assert not IdempotencyRecord.objects.filter(key="boom").exists()
    assert _counts("t-boom") == (0, 0, 0), "the submit rolled back with its key"

    retry = _post(alice, "/api/v1/threads/t-boom/mailbox", {"messages": MSG, "idempotency_key": "boom"})
    assert retry.status_code == 201
    replay = _post(alice, "/api/v1/threads/t-boom/mailbox", {"messages": MSG, "idempotency_key": "boom"})
    assert replay.json() == retry.json()
    assert _counts("t-boom") == (1, 1, 1)


def test_run_once_resolves_a_failure_from_what_was_committed(db: None) -> None:
    user_id, _ = _user_and_client("frank")
    calls = []

    def action(record: idempotency.Recorder) -> idempotency.Outcome:
        calls.append(1)
        with transaction.atomic():
            record(201, {"dispatch_id": "d1"})
        raise ConnectionError("the reply was lost on the way back")

    outcome = idempotency.run_once(user_id=user_id, key="k", fingerprint="f", action=action)
    assert outcome == (201, {"dispatch_id": "d1"})
    again = idempotency.run_once(user_id=user_id, key="k", fingerprint="f", action=action)
    assert again == outcome and len(calls) == 1


def test_a_request_in_flight_is_409_and_a_dead_holder_leaves_nothing_stuck(db: None) -> None:
    user_id, client = _user_and_client("gina")
    holder = connections.create_connection("default")  # another web process, inside the same request
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [idempotency.key_lock_id(user_id, "busy")])
        busy = _post(client, "/api/v1/threads/t-busy/mailbox", {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="busy")
        assert busy.status_code == 409 and busy.json()["code"] == "idempotency_in_progress"
        assert _counts("t-busy") == (0, 0, 0)
    finally:
        holder.close()  # the process dies before committing: its lock goes with its session, no key exists
    first = _post(client, "/api/v1/threads/t-busy/mailbox", {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="busy")
    again = _post(client, "/api/v1/threads/t-busy/mailbox", {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="busy")
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert _counts("t-busy") == (1, 1, 1)


# --- expiry and GC ----------------------------------------------------------------------------------


def test_expired_keys_are_purged_by_gc_and_then_run_again(alice: APIClient, settings: Any) -> None:
    settings.AWAKEN_IDEMPOTENCY_TTL_MS = 60_000
    first = _post(alice, "/api/v1/threads/t-exp/mailbox", {"messages": MSG, "idempotency_key": "old"})
    kept = _post(alice, "/api/v1/threads/t-exp/mailbox", {"messages": MSG, "idempotency_key": "young"})
    IdempotencyRecord.objects.filter(key="old").update(created_at=now_ms() - 61_000)

    assert maintenance.gc() == 0  # no terminal dispatch to purge; the keys' purge rides along
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["young"]

    reused = _post(alice, "/api/v1/threads/t-exp/mailbox", {"messages": MSG, "idempotency_key": "old"})
    assert reused.status_code == 201 and reused.json()["dispatch_id"] != first.json()["dispatch_id"]
    replayed = _post(alice, "/api/v1/threads/t-exp/mailbox", {"messages": MSG, "idempotency_key": "young"})
    assert replayed.json() == kept.json()
    assert Dispatch.objects.filter(thread_id="t-exp").count() == 3


def test_an_expired_key_not_yet_purged_is_not_replayed(alice: APIClient, settings: Any) -> None:
    settings.AWAKEN_IDEMPOTENCY_TTL_MS = 60_000
    first = _post(alice, "/api/v1/threads/t-exp2/mailbox", {"messages": MSG, "idempotency_key": "k"})
    IdempotencyRecord.objects.filter(key="k").update(created_at=now_ms() - 61_000)
    second = _post(alice, "/api/v1/threads/t-exp2/mailbox", {"messages": MSG, "idempotency_key": "k"})
    assert second.status_code == 201 and second.json() != first.json()
    record = IdempotencyRecord.objects.get(key="k")  # the expired row was replaced, not duplicated
    assert record.response == second.json()


def test_the_ttl_setting_defaults_to_a_day() -> None:

    assert settings.AWAKEN_IDEMPOTENCY_TTL_MS == 86_400_000


# --- /messages and /inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["queue", "live_then_queue", "interrupt_then_queue"])
def test_thread_messages_replay_with_the_key(alice: APIClient, mode: str) -> None:
    _post(alice, "/api/v1/threads/t-msg/mailbox", {"messages": MSG})
    before = _counts("t-msg")
    body = {"messages": [{"role": "user", "content": "more"}], "mode": mode}
    first = _post(alice, "/api/v1/threads/t-msg/messages", body, HTTP_IDEMPOTENCY_KEY="m1")
    again = _post(alice, "/api/v1/threads/t-msg/messages", body, HTTP_IDEMPOTENCY_KEY="m1")
    assert first.status_code == again.status_code == 202, first.content
    assert again.json() == first.json()
    assert _counts("t-msg") == (before[0] + 1, before[1] + 1, before[2] + 1)
    other = _post(
        alice, "/api/v1/threads/t-msg/messages", {**body, "messages": MSG}, HTTP_IDEMPOTENCY_KEY="m1"
    )
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"


def test_run_inputs_replay_with_the_key(alice: APIClient) -> None:
    run_id = _post(alice, "/api/v1/threads/t-in/mailbox", {"messages": MSG}).json()["run_id"]
    before = _counts("t-in")
    body = {"messages": [{"role": "user", "content": "input"}], "idempotency_key": "i1"}
    first = _post(alice, f"/api/v1/runs/{run_id}/inputs", body)
    again = _post(alice, f"/api/v1/runs/{run_id}/inputs", body)
    assert first.status_code == again.status_code == 202, first.content
    assert again.json() == first.json() and first.json()["run_status"] == "queued"
    assert first.json()["status"] == "inputs_accepted"
    assert _counts("t-in") == (before[0] + 1, before[1] + 1, before[2] + 1)
    header = _post(alice, f"/api/v1/runs/{run_id}/inputs", {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="i2")
    header_again = _post(alice, f"/api/v1/runs/{run_id}/inputs", {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="i2")
    assert header.json() == header_again.json()
    assert Dispatch.objects.filter(thread_id="t-in").count() == before[2] + 2


def test_messages_without_a_key_still_submit_every_time(alice: APIClient) -> None:
    _post(alice, "/api/v1/threads/t-nokey/mailbox", {"messages": MSG})
    for _ in range(2):
        assert _post(alice, "/api/v1/threads/t-nokey/messages", {"messages": MSG}).status_code == 202
    assert Dispatch.objects.filter(thread_id="t-nokey").count() == 3
