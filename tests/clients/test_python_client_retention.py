"""The Python client against the real server where a stream cannot be resumed as it was: following a done
run from its finish ends at once (the server's 204), and events the run's stream no longer keeps raise
`ApiError` 410 `events_not_retained` — before the stream starts, or when a stream falls behind the
retention (the server's `stream_error` event) — instead of handing out a stream with a hole in it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from awaken_client import ApiError, AsyncClient, Client
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.realtime import events
from runs_app import store as run_store
from runs_app.api.sse import CLIENT_NAME
from tests.runs_app.api.test_sse_resume import MAX_EVENTS, _append_in_one_transaction
from tests.support.servers import WebServer, asgi_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ENDS_AT_ONCE_S = 5.0


@pytest.fixture
def server(transactional_db: None, tmp_path: Path) -> Iterator[WebServer]:
    with asgi_server(tmp_path, env={"AWAKEN_SSE_KEEPALIVE_MS": "300"}) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


@pytest.fixture
def url(server: WebServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="retention-user", password="pw")
    return str(Token.objects.create(user=user).key)


@pytest.fixture
def client(url: str, token: str) -> Iterator[Client]:
    with Client(url, token) as c:
        yield c


def _queued_run(client: Client, thread_id: str, clean_redis: redis.Redis) -> str:
    """A run no worker takes: its stream is written by the test through events.py."""
    run_id = client.submit(thread_id, "sleep 1").run_id
    clean_redis.delete(events.stream_key(run_id))
    return run_id


def test_following_a_done_run_from_its_finish_ends_at_once(
    mailbox_worker: Any, client: Client, url: str, token: str
) -> None:
    with client.submit_stream("t-ended", "one two") as stream:
        received = list(stream)
    assert received[-1].type == events.RUN_FINISH
    began = time.monotonic()
    assert list(client.stream_events(str(stream.run_id), last_event_id=stream.last_event_id)) == []
    assert time.monotonic() - began < ENDS_AT_ONCE_S

    async def follow() -> list[Any]:
        async with AsyncClient(url, token) as async_client:
            follower = async_client.stream_events(str(stream.run_id), last_event_id=stream.last_event_id)
            return [event async for event in follower]

    began = time.monotonic()
    assert asyncio.run(asyncio.wait_for(follow(), ENDS_AT_ONCE_S)) == []
    assert time.monotonic() - began < ENDS_AT_ONCE_S


def test_a_stream_whose_events_are_no_longer_kept_raises_410_and_one_inside_them_resumes(
    client: Client, clean_redis: redis.Redis, settings: Any
) -> None:
    settings.AWAKEN_EVENTS_MAX_PER_RUN = MAX_EVENTS
    run_id = _queued_run(client, "t-kept", clean_redis)
    ids = [events.append_event(run_id, "text_delta", {"delta": f" w{i}"}) for i in range(200)]
    ids.append(events.append_event(run_id, events.RUN_FINISH, {"run_id": run_id, "status": "done"}))
    with pytest.raises(ApiError) as refused:
        list(client.stream_events(run_id))
    assert (refused.value.status_code, refused.value.code) == (410, "events_not_retained")
    with pytest.raises(ApiError) as trimmed:
        list(client.stream_events(run_id, last_event_id=ids[0]))
    assert trimmed.value.field == "Last-Event-ID"
    assert [e.id for e in client.stream_events(run_id, last_event_id=ids[-10])] == ids[-9:]


def test_a_stream_that_falls_behind_the_retention_raises_410_after_what_it_handed_out(
    client: Client, clean_redis: redis.Redis, settings: Any
) -> None:
    settings.AWAKEN_EVENTS_MAX_PER_RUN = MAX_EVENTS
    run_id = _queued_run(client, "t-behind", clean_redis)
    start = events.append_event(run_id, events.RUN_START, {"run_id": run_id})

    def burst_once_the_stream_follows() -> None:
        wait_until(lambda: _blocked_readers(clean_redis) == 1, what="the run's reader blocked in XREAD")
        _append_in_one_transaction(clean_redis, run_id, 5 * MAX_EVENTS)

    handed_out = []
    burst = threading.Thread(target=burst_once_the_stream_follows)
    with client.stream_events(run_id) as stream:
        handed_out.append(next(stream))
        burst.start()
        with pytest.raises(ApiError) as behind:
            handed_out.extend(stream)
    burst.join(10)
    assert [e.id for e in handed_out] == [start]
    assert (behind.value.status_code, behind.value.code) == (410, "events_not_retained")
    first_kept = events.read_events(run_id, count=1000)[0]
    assert behind.value.body["first_retained_id"] == first_kept.id
    assert run_store.load_run(run_id=run_id).status is not RunStatus.DONE  # (no worker ran it)


def _blocked_readers(client: redis.Redis) -> int:
    clients: list[dict[str, Any]] = client.client_list()
    return sum(1 for c in clients if c.get("name") == CLIENT_NAME and "b" in str(c.get("flags", "")))
