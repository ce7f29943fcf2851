"""The Python client's branching and usage (clients/python: `fork_thread`, `replay_run`, `Run.usage`)
against the real server (gunicorn + uvicorn on the test database and Redis) and a real Celery worker
running the echo agent: a run's usage, a replay from its second step, a fork at a run, and the refusals
as `ApiError`s naming the field — sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from awaken_client import ApiError, AsyncClient, Client, Fork, PendingRun, Replay, Run
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from tests.support.servers import WebServer, asgi_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    with asgi_server(Path(tmp_path_factory.mktemp("client-replay-web"))) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="client-replayer", password="pw")
    return str(Token.objects.create(user=user).key)


@pytest.fixture
def url(server: WebServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def _run(answer: Run | PendingRun) -> Run:
    assert isinstance(answer, Run), answer
    return answer


def test_usage_replay_and_fork(mailbox_worker: Any, url: str, token: str) -> None:
    with Client(url, token) as client:
        source = _run(client.wait("c-replay", "steps 2", wait_timeout_s=30))
        assert source.final_output == "steps done: 2 steps, 2 executions"
        # words as tokens: "steps 2" in, six words out, and one in / one out per step
        assert (source.usage.input_tokens, source.usage.output_tokens, source.usage.cost) == (4, 8, None)
        [attempt] = source.usage.attempts
        assert (attempt.dispatch_id, attempt.attempt, attempt.ended) == (source.dispatch_id, 1, "finished")
        assert source.usage.total_tokens == 12

        turn = source.raw["input"]["trigger_message_ids"][-1]
        replay = client.replay_run(source.run_id, f"steps:{turn}:2", thread_id="c-replay-2")
        assert isinstance(replay, Replay)
        assert (replay.thread_id, replay.replayed_steps, replay.replay_of_run_id) == (
            "c-replay-2",
            1,
            source.run_id,
        )
        assert (replay.forked_from_thread_id, replay.forked_from_run_id) == ("c-replay", None)
        replayed = _run(client.join(replay.run_id, timeout_s=30))
        assert replayed.final_output == "steps done: 2 steps, 1 executions"
        assert (replayed.usage.input_tokens, replayed.usage.output_tokens) == (3, 7)
        assert replayed.metadata["replay_of"] == {"run_id": source.run_id, "from_step": f"steps:{turn}:2"}

        fork = client.fork_thread("c-replay", at_run_id=source.run_id, new_thread_id="c-fork")
        assert isinstance(fork, Fork)
        assert (fork.thread.id, fork.forked_from_run_id, fork.message_count) == ("c-fork", source.run_id, 2)
        assert fork.thread.metadata["forked_from"] == {"thread_id": "c-replay", "run_id": source.run_id}
        assert [m.content for m in client.list_messages("c-fork").items] == [
            "steps 2",
            "steps done: 2 steps, 2 executions",
        ]

        with pytest.raises(ApiError) as raised:
            client.replay_run(source.run_id, "no-such-step")
        assert (raised.value.status_code, raised.value.code, raised.value.field) == (
            400,
            "step_not_in_journal",
            "from_step",
        )
        with pytest.raises(ApiError) as raised:
            client.fork_thread("c-replay", new_thread_id="c-fork")
        assert (raised.value.status_code, raised.value.field) == (409, "thread_id")


def test_async_client_forks_and_replays(mailbox_worker: Any, url: str, token: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(url, token) as client:
            source = _run(await client.wait("ac-replay", "steps 1", wait_timeout_s=30))
            turn = source.raw["input"]["trigger_message_ids"][-1]
            replay = await client.replay_run(source.run_id, f"steps:{turn}:1")
            assert replay.replayed_steps == 0 and replay.thread_id != "ac-replay"
            done = _run(await client.join(replay.run_id, timeout_s=30))
            assert done.final_output == "steps done: 1 steps, 1 executions"
            fork = await client.fork_thread("ac-replay")
            assert fork.forked_from_run_id == source.run_id and fork.message_count == 2
            with pytest.raises(ApiError) as raised:
                await client.fork_thread("ac-replay", at_run_id="not-a-run")
            assert (raised.value.status_code, raised.value.field) == (404, "at_run_id")

    asyncio.run(scenario())
