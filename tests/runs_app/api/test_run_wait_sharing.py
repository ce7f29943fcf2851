"""`GET runs/{id}/join` and `POST threads/{id}/runs/wait` share the run's one event reader per process
(`RunFeed`, runs_app/api/sse.py) with its SSE streams: on the real ASGI server, 150 joins on one running
run add a handful of Redis connections, not one each (issue 18 item 8: 39 -> 187 clients before), and
all 150 answer when the run ends, woken by its run_finish."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.realtime import events
from runs_app import store as run_store
from runs_app.api import run_wait
from runs_app.api.run_wait import BACKSTOP_S
from tests.support.http_sse import HttpConnection, Response
from tests.support.servers import WebServer, asgi_server, free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HOST = "127.0.0.1"
JOINS = 150
# What 150 waits may add: one reader of the run (blocked in XREAD) per web process, and the connections of
# the threads that run views (their throttle and cache calls): at most one a view thread, and a process
# runs at most AWAKEN_WEB_MAX_CONCURRENT_VIEWS (16) views at once, however many waits there are. How many
# of those threads are busy at once depends on the machine's load (5 at most when run alone, 14 once
# beside two other suites), so the bound is the permits', and the sharing is asserted on the readers.
MAX_READERS = 1  # the test's server is one process
MAX_NEW_CONNECTIONS = 16 + MAX_READERS
TIMED_OUT_JOIN_S = 8.0  # long enough for 150 joins to be waiting at once on a loaded machine


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="join-user", password="pw")
    return str(Token.objects.create(user=user).key)


@pytest.fixture
def server(transactional_db: None, tmp_path: Path) -> Iterator[WebServer]:
    with asgi_server(tmp_path) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}", "Content-Type": "application/json"}


async def _request(server: WebServer, token: str, method: str, path: str, body: Any = None) -> Response:
    conn = HttpConnection(HOST, server.port)
    try:
        payload = b"" if body is None else json.dumps(body).encode()
        return await conn.request(method, path, _headers(token) | {"Connection": "close"}, payload)
    finally:
        await conn.close()


class ClientCount:
    """Samples Redis's `CLIENT LIST` until stopped: the most clients, and the most blocked in XREAD (a
    run's reader waiting for its next event) seen at once."""

    def __init__(self, client: redis.Redis) -> None:
        self.client, self.most, self.most_readers, self.samples = client, 0, 0, 0

    def now(self) -> int:
        return len(self.client.client_list())

    def _sample(self) -> None:
        clients = self.client.client_list()
        readers = [c for c in clients if c.get("cmd") == "xread" and "b" in c.get("flags", "")]
        self.most, self.most_readers = max(self.most, len(clients)), max(self.most_readers, len(readers))

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self._sample)
            self.samples += 1
            await asyncio.sleep(0.05)


def test_150_joins_on_one_run_share_its_reader_and_all_answer_when_it_ends(
    mailbox_worker: Any, clean_redis: redis.Redis, server: WebServer, token: str
) -> None:
    submitted = asyncio.run(
        _request(
            server,
            token,
            "POST",
            "/api/v1/threads/t-joins/mailbox",
            {"messages": [{"role": "user", "content": "sleep 120"}]},
        )
    )
    assert submitted.status == 201, submitted.body
    run_id = submitted.json()["run_id"]
    wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is RunStatus.RUNNING)
    wait_until(lambda: events.has_stream(run_id), what="run_start appended")
    counter = ClientCount(clean_redis)
    baseline = counter.now()

    async def joins(timeout_s: float) -> list[tuple[Response, float]]:
        async def join() -> tuple[Response, float]:
            path = f"/api/v1/runs/{run_id}/join?timeout_s={timeout_s:g}"
            response = await _request(server, token, "GET", path)
            return response, time.monotonic()

        return list(await asyncio.gather(*(join() for _ in range(JOINS))))

    async def timed_out_joins() -> list[tuple[Response, float]]:
        stop = asyncio.Event()
        sampler = asyncio.create_task(counter.sample(stop))
        try:
            return await asyncio.wait_for(joins(TIMED_OUT_JOIN_S), 120)
        finally:
            stop.set()
            await sampler

    # 1. 150 joins that wait out their timeout: all waiting at once, on one reader
    answered = asyncio.run(timed_out_joins())
    assert [r.status for r, _ in answered] == [202] * JOINS, answered[0][0].body
    assert {r.json()["status"] for r, _ in answered} == {"running"}
    times = [t for _, t in answered]
    # each wait lasted TIMED_OUT_JOIN_S up to its answer: answers this close together mean the 150 waits
    # overlapped, so the samples taken meanwhile saw all of them waiting
    assert max(times) - min(times) < TIMED_OUT_JOIN_S - 1.0, f"joins spread {max(times) - min(times):.1f}s"
    assert counter.samples > 10
    print(
        f"\nphase 1: Redis clients {baseline} -> at most {counter.most} with {JOINS} joins waiting, "
        f"{counter.most_readers} reader(s) blocked in XREAD"
    )
    assert 1 <= counter.most_readers <= MAX_READERS, counter.most_readers  # the 150 waits share one
    assert counter.most - baseline <= MAX_NEW_CONNECTIONS, (
        f"{JOINS} joins on one run took Redis from {baseline} to {counter.most} clients"
    )

    # 2. 150 joins answered by the run's end: its run_finish wakes them (not the 10 s backstop)
    async def joins_until_the_run_ends() -> tuple[list[tuple[Response, float]], float]:
        stop = asyncio.Event()
        sampler = asyncio.create_task(counter.sample(stop))
        pending = asyncio.create_task(joins(60))
        try:
            await asyncio.sleep(0)  # (the joins are sent; some may still be in their view when it ends)
            await _until(lambda: counter.samples > 20)
            assert not pending.done()
            cancelled = await _request(server, token, "POST", f"/api/v1/runs/{run_id}/cancel")
            assert cancelled.status == 202, cancelled.body
            ended = time.monotonic()
            return await asyncio.wait_for(pending, 60), ended
        finally:
            stop.set()
            await sampler

    counter.most = 0
    answered, ended = asyncio.run(joins_until_the_run_ends())
    assert [r.status for r, _ in answered] == [200] * JOINS, answered[0][0].body
    assert {r.json()["status"] for r, _ in answered} == {"done"}
    assert {r.json()["termination_reason"]["type"] for r, _ in answered} == {"cancelled"}
    slowest = max(t for _, t in answered) - ended
    assert slowest < BACKSTOP_S, f"the last join answered {slowest:.1f}s after the cancel"
    assert counter.most - baseline <= MAX_NEW_CONNECTIONS


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await asyncio.sleep(0.02)


def test_a_wait_whose_feed_cannot_start_keeps_to_the_postgresql_backstop(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis down: the wait neither fails nor hangs; it reads the run every BACKSTOP_S until it is over."""
    settings.AWAKEN_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setattr(run_wait, "BACKSTOP_S", 0.2)
    probes: list[float] = []

    def probe() -> tuple[bool, None]:
        probes.append(time.monotonic())
        return len(probes) >= 4, None

    began = time.monotonic()
    over, _ = asyncio.run(run_wait.wait_until_over("run-without-redis", probe, timeout_s=30))
    assert over and len(probes) == 4
    assert time.monotonic() - began < 10
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert all(gap >= 0.15 for gap in gaps), gaps  # on the backstop's clock, not a busy loop
