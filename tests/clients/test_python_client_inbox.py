"""The Python client's inbox methods (docs/inbox.md) against the real server (the ASGI web server on the
test database): a thread's policy, `send_messages` in `auto` mode answering what became of each batch,
pause and resume, and schedules — with `Client` and `AsyncClient` alike, errors as `ApiError` naming
the field."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from awaken_client import ApiError, AsyncClient, Client, InboxPolicy
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from tests.support.servers import WebServer, asgi_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SLOW: InboxPolicy = {"debounce_ms": 60_000, "max_wait_ms": 120_000}


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    with asgi_server(Path(tmp_path_factory.mktemp("client-inbox-web"))) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="inbox-user", password="pw")
    return str(Token.objects.create(user=user).key)


@pytest.fixture
def url(server: WebServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def test_sync_policy_messages_pause_and_schedules(url: str, token: str) -> None:
    with Client(url, token) as client:
        thread = client.create_thread("t-sync", inbox={"debounce_ms": 500})
        assert thread.inbox == {"debounce_ms": 500, "max_wait_ms": 2_500, "while_running": "queue"}
        assert client.update_thread("t-sync", inbox=SLOW).inbox == {**SLOW, "while_running": "queue"}
        first = client.send_messages("t-sync", "one")
        second = client.send_messages("t-sync", [{"role": "user", "content": "two"}])
        assert (first.inbox, second.inbox) == ("queued", "coalesced")
        assert second.dispatch_id == first.dispatch_id and second.starts_at is not None
        assert client.update_thread("t-sync", inbox=None).inbox is None
        paused = client.pause_thread("t-sync", reason="checking")
        assert paused.paused and paused.pauses[0].paused_by == "user:inbox-user"
        assert client.get_pause("t-sync").pauses[0].reason == "checking"
        resumed = client.resume_thread("t-sync")
        assert resumed.resumed and not resumed.paused
        created = client.create_schedule("t-sync", "daily digest", cron="0 7 * * *", timezone="Europe/Berlin")
        schedule = client.get_schedule(created.schedule_id)
        assert (schedule.cron, schedule.timezone, schedule.next_run_at) == (
            "0 7 * * *",
            "Europe/Berlin",
            created.next_run_at,
        )
        assert client.update_schedule(created.schedule_id, enabled=False).next_run_at is None
        assert [s.schedule_id for s in client.list_schedules("t-sync").items] == [created.schedule_id]
        client.delete_schedule(created.schedule_id)
        with pytest.raises(ApiError) as missing:
            client.get_schedule(created.schedule_id)
        assert missing.value.status_code == 404
        with pytest.raises(ApiError) as bad:
            client.create_schedule("t-sync", "x", interval_s=0)
        assert (bad.value.status_code, bad.value.field) == (400, "interval_s")


def test_async_policy_messages_pause_and_schedules(url: str, token: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(url, token) as client:
            await client.create_thread("t-async", inbox=SLOW)
            answers = [await client.send_messages("t-async", f"m{i}") for i in range(3)]
            assert [a.inbox for a in answers] == ["queued", "coalesced", "coalesced"]
            assert (await client.pause_thread("t-async")).paused
            assert (await client.resume_thread("t-async")).resumed
            created = await client.create_schedule("t-async", "tick", interval_s=3_600, if_busy="enqueue")
            changed = await client.update_schedule(created.schedule_id, messages="tock", agent_id=None)
            assert changed.messages == [{"role": "user", "content": "tock"}] and changed.if_busy == "enqueue"
            assert (await client.list_schedules("t-async")).total == 1
            await client.delete_schedule(created.schedule_id)
            with pytest.raises(ApiError) as bad:
                await client.update_thread("t-async", inbox={"debounce_ms": -1})
            assert (bad.value.status_code, bad.value.field) == (400, "inbox.debounce_ms")

    asyncio.run(scenario())
