"""The Python client (clients/python, `awaken_client`) against the real server: the ASGI web server
(gunicorn + uvicorn, as `make run` starts it) on the test database and Redis, and a real Celery worker
running the echo agent. Sync `Client` and async `AsyncClient` alike: a streamed submit to its end, a
stream whose connection is really dropped after its first event (a proxy cuts it) and resumed with
`Last-Event-ID`, wait and join, a decision for an `ask` run, cancelling a `sleep 5` run, threads, and
errors (`ApiError` with the status and the field the API named)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from awaken_client import ApiError, AsyncClient, Client, Event, PendingRun, Run
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from mailbox_app.realtime import events
from tests.clients.cutting_proxy import cutting_proxy
from tests.support.servers import WebServer, asgi_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CANCEL_BUDGET_S = 4.0  # a cancelled `sleep 5` ends well before its 5 s


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    with asgi_server(Path(tmp_path_factory.mktemp("client-web"))) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="client-user", password="pw")
    return str(Token.objects.create(user=user).key)


@pytest.fixture
def url(server: WebServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def client(url: str, token: str) -> Iterator[Client]:
    with Client(url, token) as c:
        yield c


def _stream_ids(run_id: str) -> list[str]:
    return [e.id for e in events.read_events(run_id)]


def _text(received: list[Event]) -> str:
    return "".join(e.data["delta"] for e in received if e.type == "text_delta")


def _run(result: Run | PendingRun) -> Run:
    assert isinstance(result, Run), result
    return result


# --- sync -------------------------------------------------------------------------------------------


def test_submit_streams_to_the_end(mailbox_worker: Any, client: Client) -> None:
    with client.submit_stream("t-echo", "one two three", metadata={"source": "client"}) as stream:
        received = list(stream)
    assert stream.run_id and stream.thread_id == "t-echo" and stream.dispatch_id
    assert [e.id for e in received] == _stream_ids(stream.run_id)
    assert received[0].type == "run_start" and received[-1].type == "run_finish"
    assert received[-1].data["status"] == "done" and stream.reconnects == 0
    assert _text(received) == "echo: one two three"
    run = client.get_run(stream.run_id)
    assert (run.status, run.final_output, run.metadata) == (
        "done",
        "echo: one two three",
        {"source": "client"},
    )

    with client.submit_stream(None, "fresh") as anywhere:  # POST runs: a new thread
        assert [e.type for e in anywhere][-1] == "run_finish"
    assert anywhere.thread_id and anywhere.thread_id != "t-echo"
    assert client.get_thread(anywhere.thread_id).latest_run_id == anywhere.run_id


def test_a_dropped_submit_stream_resumes_with_last_event_id(
    mailbox_worker: Any, server: WebServer, token: str
) -> None:
    with cutting_proxy(server.port) as proxy, Client(proxy.url, token) as client:
        with client.submit_stream("t-cut", "sleep 1") as stream:
            received = list(stream)
        assert proxy.cuts == 1 and stream.reconnects == 1
    assert proxy.last_event_ids == [received[0].id]  # the resume asked for what came after run_start
    assert stream.run_id
    ids = [e.id for e in received]
    assert ids == _stream_ids(stream.run_id)  # every event once, in order, across the drop
    assert len(set(ids)) == len(ids)
    assert received[0].type == "run_start" and received[-1].type == "run_finish"
    assert _text(received) == "slept 1"


def test_a_dropped_event_stream_resumes_while_the_run_goes_on(
    mailbox_worker: Any, server: WebServer, token: str, client: Client
) -> None:
    submitted = client.submit("t-cut-bg", "sleep 1", idempotency_key="k-1")
    assert client.submit("t-cut-bg", "sleep 1", idempotency_key="k-1") == submitted  # replayed
    with cutting_proxy(server.port) as proxy, Client(proxy.url, token) as via_proxy:
        with via_proxy.stream_events(submitted.run_id) as stream:  # 204 until it starts: polled
            first = next(stream)
            rest = list(stream)
        assert proxy.cuts == 1 and stream.reconnects == 1
    assert first.type == "run_start" and proxy.last_event_ids == [first.id]
    assert [first.id] + [e.id for e in rest] == _stream_ids(submitted.run_id)
    assert rest[-1].type == "run_finish" and rest[-1].data["status"] == "done"


def test_wait_and_join(mailbox_worker: Any, client: Client) -> None:
    done = _run(client.wait("t-wait", "hi there", wait_timeout_s=20))
    assert (done.status, done.final_output, done.thread_id) == ("done", "echo: hi there", "t-wait")
    assert done.termination is not None and done.termination.type == "natural_end"

    slow = client.submit("t-join", "sleep 2", timeout_s=60)
    pending = client.join(slow.run_id, timeout_s=0.3)
    assert isinstance(pending, PendingRun) and pending.run_id == slow.run_id
    assert pending.status in ("created", "running")
    joined = _run(client.join(slow.run_id, timeout_s=20))
    assert (joined.status, joined.final_output, joined.timeout_ms) == ("done", "slept 2", 60_000)

    later = client.wait("t-join", "sleep 3", wait_timeout_s=0.5, multitask_strategy="enqueue")
    assert isinstance(later, PendingRun) and later.dispatch_id
    assert _run(client.join(later.run_id, timeout_s=20)).final_output == "slept 3"


def test_a_decision_resumes_an_ask_run(mailbox_worker: Any, client: Client) -> None:
    asked = _run(client.wait("t-ask", "ask may I?"))
    assert asked.status == "waiting" and asked.waiting is not None
    [call_id] = asked.pending_tool_call_ids
    with client.stream_events(asked.run_id) as first_turn:
        kinds = [e.type for e in first_turn]  # ends at the run_finish of the suspension
    assert kinds[0] == "run_start" and kinds[-1] == "run_finish" and "tool_call_start" in kinds

    accepted = client.decide_run(asked.run_id, call_id, "resume", {"ok": True})
    assert accepted.status == "decision_submitted"
    with client.stream_events(asked.run_id, last_event_id=first_turn.last_event_id) as continuation:
        resumed = list(continuation)  # only what came after the suspension
    assert resumed[-1].type == "run_finish" and resumed[-1].data["status"] == "done"
    assert "tool_call_resumed" in [e.type for e in resumed]
    final = _run(client.join(asked.run_id))
    assert final.final_output == 'approved: {"ok": true}'

    with pytest.raises(ApiError) as raised:
        client.decide_run(asked.run_id, call_id, "resume")  # the call took its one decision already
    assert (raised.value.status_code, raised.value.code) == (409, "already_decided")  # docs/security.md


def test_cancel_a_sleeping_run_and_a_thread(mailbox_worker: Any, client: Client) -> None:
    sleeping = client.submit("t-cancel", "sleep 5")
    wait_until(lambda: client.get_run(sleeping.run_id).status == "running", what="the run started")
    began = time.monotonic()
    assert client.cancel_run(sleeping.run_id).status == "cancel_requested"
    ended = _run(client.join(sleeping.run_id, timeout_s=20))
    assert time.monotonic() - began < CANCEL_BUDGET_S
    assert ended.status == "done" and ended.termination is not None
    assert ended.termination.type == "cancelled"

    again = client.submit("t-cancel", "sleep 5")
    wait_until(lambda: client.get_run(again.run_id).status == "running", what="the second run started")
    assert client.cancel_thread("t-cancel").status == "cancel_requested"
    assert _run(client.join(again.run_id, timeout_s=20)).termination.type == "cancelled"
    with pytest.raises(ApiError) as raised:
        client.cancel_thread("t-cancel")  # nothing left to cancel
    assert raised.value.status_code == 404


def test_thread_crud(mailbox_worker: Any, client: Client) -> None:
    created = client.create_thread("t-crud", metadata={"team": "a", "tier": 1}, title="First")
    assert (created.id, created.title, created.metadata, created.status) == (
        "t-crud",
        "First",
        {"team": "a", "tier": 1},
        "idle",
    )
    with pytest.raises(ApiError) as raised:
        client.create_thread("t-crud")
    assert (raised.value.status_code, raised.value.code, raised.value.field) == (
        409,
        "thread_exists",
        "thread_id",
    )
    assert client.create_thread("t-crud", if_exists="do_nothing").title == "First"
    fresh = client.create_thread(metadata={"team": "b"})
    assert fresh.id and fresh.id != "t-crud"

    patched = client.update_thread("t-crud", metadata={"tier": None, "stage": "beta"})
    assert (patched.metadata, patched.title) == ({"team": "a", "stage": "beta"}, "First")
    assert client.update_thread("t-crud", title=None).title is None
    assert client.get_thread("t-crud").metadata == {"team": "a", "stage": "beta"}

    found = client.search_threads(metadata={"team": "a"})
    assert [t.id for t in found.items] == ["t-crud"] and found.total == 1 and not found.has_more
    assert {t.id for t in client.list_threads().items} == {"t-crud", fresh.id}

    _run(client.wait("t-crud", "hello"))
    messages = client.list_messages("t-crud")
    assert [(m.role, m.content) for m in messages.items] == [("user", "hello"), ("assistant", "echo: hello")]
    assert client.search_threads(status="idle", metadata={"stage": "beta"}).total == 1
    assert client.list_runs(thread_id="t-crud").total == 1

    deleted = client.delete_thread("t-crud")
    assert deleted.thread_id == "t-crud" and deleted.deleted["run"] == 1
    with pytest.raises(ApiError) as raised:
        client.get_thread("t-crud")
    assert (raised.value.status_code, raised.value.code) == (404, "thread_not_found")


def test_errors_carry_the_status_and_the_field(client: Client, url: str) -> None:
    with pytest.raises(ApiError) as raised:
        client.submit("t-bad", [{"role": "robot", "content": "x"}])
    error = raised.value
    assert (error.status_code, error.code, error.field) == (400, "invalid", "messages[0].role")
    assert isinstance(error.body, dict) and error.body["field"] == "messages[0].role"

    with pytest.raises(ApiError) as raised:
        client.submit_stream("t-bad", "x", after_seconds=-1)
    assert (raised.value.status_code, raised.value.field) == (400, "after_seconds")

    with pytest.raises(ApiError) as raised:
        client.join("no-such-run")
    assert (raised.value.status_code, raised.value.code) == (404, "run_not_found")

    with Client(url, "not-a-token") as stranger, pytest.raises(ApiError) as raised:
        stranger.list_threads()
    assert raised.value.status_code == 401


# --- async ------------------------------------------------------------------------------------------


def test_async_client_streams_resumes_waits_and_decides(
    mailbox_worker: Any, server: WebServer, token: str, url: str
) -> None:
    async def scenario() -> None:
        async with AsyncClient(url, token) as client:
            stream = await client.submit_stream("ta-echo", "alpha beta")
            async with stream:
                received = [e async for e in stream]
            assert stream.run_id and [e.id for e in received] == _stream_ids(stream.run_id)
            assert _text(received) == "echo: alpha beta"

            submitted = await client.submit("ta-cut", "sleep 1")
            with cutting_proxy(server.port) as proxy:
                async with (
                    AsyncClient(proxy.url, token) as via_proxy,
                    via_proxy.stream_events(submitted.run_id) as cut,
                ):
                    resumed = [e async for e in cut]
                assert proxy.cuts == 1 and cut.reconnects == 1
                assert proxy.last_event_ids == [resumed[0].id]
            ids = [e.id for e in resumed]
            assert ids == _stream_ids(submitted.run_id) and len(set(ids)) == len(ids)
            assert resumed[0].type == "run_start" and resumed[-1].data["status"] == "done"

            done = await client.wait("ta-wait", "hello", metadata={"k": "v"})
            assert isinstance(done, Run) and done.final_output == "echo: hello"
            assert (await client.list_runs(metadata={"k": "v"})).total == 1

            asked = await client.wait("ta-ask", "ask ok?")
            assert isinstance(asked, Run) and asked.status == "waiting"
            [call_id] = asked.pending_tool_call_ids
            assert (await client.decide_thread("ta-ask", call_id, "cancel")).status == "decision_submitted"
            # a join right after the decision may still see the run waiting (its resume not started yet)
            denied = await _until_done(client, asked.run_id)
            assert denied.final_output == "denied"

    asyncio.run(scenario())


async def _until_done(client: AsyncClient, run_id: str, timeout_s: float = 15.0) -> Run:
    deadline = time.monotonic() + timeout_s
    while True:
        run = await client.join(run_id, timeout_s=timeout_s)
        if isinstance(run, Run) and run.status == "done":
            return run
        assert time.monotonic() < deadline, f"run {run_id} did not finish: {run}"
        await asyncio.sleep(0.05)


def test_async_client_cancels_threads_and_errors(mailbox_worker: Any, token: str, url: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(url, token) as client:
            sleeping = await client.submit("ta-cancel", "sleep 5")
            began = time.monotonic()
            while (await client.get_run(sleeping.run_id)).status != "running":
                assert time.monotonic() - began < 15, "the run did not start"
                await asyncio.sleep(0.05)
            began = time.monotonic()
            assert (await client.cancel_run(sleeping.run_id)).status == "cancel_requested"
            ended = await client.join(sleeping.run_id, timeout_s=20)
            assert time.monotonic() - began < CANCEL_BUDGET_S
            assert isinstance(ended, Run) and ended.termination is not None
            assert ended.termination.type == "cancelled"

            thread = await client.create_thread("ta-crud", metadata={"x": 1}, title="T")
            assert (thread.id, thread.status) == ("ta-crud", "idle")
            assert (await client.update_thread("ta-crud", metadata={"y": 2})).metadata == {"x": 1, "y": 2}
            assert [t.id for t in (await client.search_threads(metadata={"y": 2})).items] == ["ta-crud"]
            assert (await client.get_thread("ta-crud")).title == "T"
            assert (await client.delete_thread("ta-crud")).thread_id == "ta-crud"

            try:
                await client.wait("ta-bad", "x", priority=300)
            except ApiError as exc:
                assert (exc.status_code, exc.code, exc.field) == (400, "invalid", "priority")
            else:
                raise AssertionError("an out-of-range priority was accepted")
            try:
                await client.get_thread("ta-crud")
            except ApiError as exc:
                assert exc.status_code == 404
            else:
                raise AssertionError("a deleted thread was found")

    asyncio.run(scenario())
