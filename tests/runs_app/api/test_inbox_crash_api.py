"""Issue 22's exactness claim end to end (docs/inbox.md, "Exact and durable"): 20 concurrent `POST
threads/{id}/messages` with mode `auto` through the real ASGI server, a real `celery worker` killed with
SIGKILL of its process group while the debounce window is open (it holds the window's doorbell
countdown), a second one killed while it executes the coalesced run, and a third whose claim comes from
the sweep reclaiming the expired lease (as beat would). Every accepted message is in exactly one run's
input, and each answer says what happened to it.

The messages are `sleep 4.01` ... `sleep 4.20` (distinct, so each answer maps to one logged message by
its text, and each keeps echo busy for about 4 s, long enough to kill the worker while the run is
executing). Echo acts on the last user message of its input, so the run's reply names the message that
arrived last.

The second test is a gap this one does not reach (strict xfail): a message answered `steered` into an
attempt that is killed before its agent takes the steering reaches no run at all."""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from mailbox_app import store
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.storage import RunRequestSnapshot
from runs_app import store as run_store
from tests.support.agents import TEST_AGENTS
from tests.support.servers import WebServer, asgi_server, database_url_of_test_db
from tests.support.waiting import wait_until
from tests.support.worker_farm import (
    MAILBOX_ENV,
    MP_CONFIG,
    SIGNAL_ENV,
    WorkerFarm,
    dispatch_of,
    probe_workers,
    run_of,
    sweep_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

THREAD = "t-burst-kill"
POSTS = 20
# the window stays open DEBOUNCE_MS after the latest message: the first worker dies long before that
POLICY = {"debounce_ms": 4_000, "max_wait_ms": 60_000, "while_running": "steer"}
SLEEP_S = 4  # each message keeps echo busy this long (plus its hundredths)
HTTP_TIMEOUT_S = 60.0


def _text(i: int) -> str:
    return f"sleep {SLEEP_S}.{i + 1:02d}"


@pytest.fixture
def farm(
    transactional_db: None, engine_settings: Any, clean_redis: redis.Redis, tmp_path: Path
) -> Iterator[WorkerFarm]:
    """`celery worker` subprocesses on the test database and Redis, with the short lease of MAILBOX_ENV
    (also this process's: its sweep reclaims with the workers' lease)."""
    engine_settings.AWAKEN_MAILBOX = MP_CONFIG
    env = {k: v for k, v in os.environ.items() if k != "AWAKEN_FAULT_POINT"} | MAILBOX_ENV | SIGNAL_ENV
    env |= {
        "DATABASE_URL": database_url_of_test_db(),
        "REDIS_URL": django_settings.REDIS_URL,
        "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
        "AWAKEN_AGENTS": json.dumps(TEST_AGENTS),  # the probe's `noop` beside the built-in `echo`
        "AWAKEN_LIVE_SUSPEND_HOLD_MS": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    workers = WorkerFarm(tmp_path, env)
    try:
        yield workers
    finally:
        workers.stop_all()
        workers.print_logs()  # shown by pytest only when the test failed


@pytest.fixture
def server(transactional_db: None, tmp_path: Path) -> Iterator[WebServer]:
    with asgi_server(tmp_path, env=MAILBOX_ENV | SIGNAL_ENV) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="burst-user", password="pw")
    return str(Token.objects.create(user=user).key)


def _call(server: WebServer, token: str, method: str, path: str, body: Any) -> tuple[int, Any]:
    """One request on its own connection (each posting thread has its own, as separate clients do)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HTTP_TIMEOUT_S)
    try:
        headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def _log_ids() -> dict[str, str]:
    """The thread's user messages, text -> message id, checking that each text was logged once."""
    records, total = run_store.list_message_records(thread_id=THREAD, limit=100, include_internal=True)
    assert total == len(records)
    users = [r for r in records if r.message.role.value == "user"]
    texts = Counter(r.message.text for r in users)
    assert texts == Counter(_text(i) for i in range(POSTS)), texts
    return {r.message.text: r.message_id for r in users}


def _log_order() -> list[str]:
    records, _ = run_store.list_message_records(thread_id=THREAD, limit=100, include_internal=True)
    return [r.message_id for r in records if r.message.role.value == "user"]


def test_twenty_concurrent_posts_and_two_killed_workers_leave_every_message_in_exactly_one_run(
    farm: WorkerFarm, server: WebServer, token: str
) -> None:
    assert _call(server, token, "POST", "/api/v1/threads", {"thread_id": THREAD})[0] == 201
    status, thread = _call(server, token, "PATCH", f"/api/v1/threads/{THREAD}", {"inbox": POLICY})
    assert status == 200 and thread["inbox"] == POLICY, thread
    w0 = farm.start("w0")
    probe_workers()

    # 20 clients post at once; w0 (which takes the window's doorbell countdown) dies at the first answer
    gate = threading.Barrier(POSTS)

    def post(i: int) -> tuple[int, Any]:
        gate.wait(timeout=HTTP_TIMEOUT_S)
        body = {"messages": [{"role": "user", "content": _text(i)}], "mode": "auto"}
        return _call(server, token, "POST", f"/api/v1/threads/{THREAD}/messages", body)

    with ThreadPoolExecutor(max_workers=POSTS) as pool:
        futures = [pool.submit(post, i) for i in range(POSTS)]
        wait(futures, timeout=HTTP_TIMEOUT_S, return_when=FIRST_COMPLETED)
        w0.kill_group()
        answers = [f.result(timeout=HTTP_TIMEOUT_S) for f in futures]

    assert [code for code, _ in answers] == [202] * POSTS, answers
    bodies = [body for _, body in answers]
    # no worker was alive to claim it: one window, never attempted, holding the 20
    assert Counter(b["inbox"] for b in bodies) == {"queued": 1, "coalesced": POSTS - 1}, bodies
    assert {(b["dispatch_id"], b["run_id"], b["thread_id"], b["status"]) for b in bodies} == {
        (bodies[0]["dispatch_id"], bodies[0]["run_id"], THREAD, "queued")
    }
    assert all(b["starts_at"] for b in bodies)
    dispatch_id, run_id = bodies[0]["dispatch_id"], bodies[0]["run_id"]
    window = dispatch_of(dispatch_id)
    assert (window.status, window.attempt_count) == (DispatchStatus.QUEUED, 0), window
    ids = _log_ids()
    order = _log_order()
    # the answer that says `queued` is the message that opened the window: the first in arrival order
    (opener,) = [i for i, b in enumerate(bodies) if b["inbox"] == "queued"]
    assert order[0] == ids[_text(opener)]

    # w1 takes the window (its own doorbells, or the sweep's) and dies while executing the coalesced run
    w1 = farm.start("w1")
    sweep_until(dispatch_id, DispatchStatus.CLAIMED, timeout=60)
    running = wait_until(
        lambda: (r := run_of(run_id)).status is RunStatus.RUNNING and r, timeout=30, what="run running"
    )
    assert running.status is RunStatus.RUNNING
    w1.kill_group()
    killed = dispatch_of(dispatch_id)
    assert (killed.status, killed.attempt_count) == (DispatchStatus.CLAIMED, 0), killed
    assert run_of(run_id).status is RunStatus.RUNNING  # its attempt died with w1, unfinished

    # w2: the sweep reclaims the expired lease and the run is attempted again, to the end
    farm.start("w2")
    acked = sweep_until(dispatch_id, DispatchStatus.ACKED, timeout=90)
    assert acked.attempt_count == 1  # the attempt whose lease the sweep reclaimed (the window's none)

    # exactly one dispatch and one run on the thread, and the run holds each of the 20 exactly once,
    # in arrival order
    assert [d.dispatch_id for d in store.list_dispatches(THREAD)] == [dispatch_id]
    runs = run_store.list_runs(thread_id=THREAD, limit=100)
    assert [r.run_id for r in runs.items] == [run_id] and runs.total == 1
    done = wait_until(
        lambda: (r := run_of(run_id)).status is RunStatus.DONE and r, timeout=30, what="run done"
    )
    assert done.request is not None and done.input is not None
    held = Counter(mid for r in runs.items if r.request for mid in r.request.input_message_ids)
    assert held == Counter(ids.values()), held  # each message in exactly one run's input, once
    assert done.request.input_message_ids == order
    assert done.input.trigger_message_ids == order
    assert RunRequestSnapshot.model_validate(acked.request).input_message_ids == order
    assert _log_order() == order  # no message logged twice or lost
    # the agent's input ended with the message that arrived last (echo answers the last one)
    last_text = next(text for text, mid in ids.items() if mid == order[-1])
    assert done.final_output == f"slept {last_text.removeprefix('sleep ')}"
    assert done.termination_reason is None or done.termination_reason.type != "cancelled"


class SteeringLost(Exception):
    """The steered message reached no run (the known gap below); any other failure is a real one."""


@pytest.mark.xfail(
    strict=True,
    raises=SteeringLost,
    reason="a message steered into an attempt that dies before its agent takes it reaches no run: the "
    "retry's input is the snapshot's input_message_ids, and the acknowledged steering was only in the "
    "dead worker's memory (attempt.Leftovers are queued only by an attempt that ends)",
)
def test_a_message_steered_into_an_attempt_killed_before_taking_it_reaches_the_retry(
    farm: WorkerFarm, server: WebServer, token: str
) -> None:
    thread_id = "t-steer-kill"
    assert _call(server, token, "POST", "/api/v1/threads", {"thread_id": thread_id})[0] == 201
    policy = {"debounce_ms": 0, "while_running": "steer"}
    assert _call(server, token, "PATCH", f"/api/v1/threads/{thread_id}", {"inbox": policy})[0] == 200
    w1 = farm.start("w1")
    path = f"/api/v1/threads/{thread_id}/messages"
    code, first = _call(
        server, token, "POST", path, {"messages": [{"role": "user", "content": "sleep 4"}], "mode": "auto"}
    )
    assert code == 202 and first["inbox"] == "queued", first
    run_id = first["run_id"]
    wait_until(lambda: run_of(run_id).status is RunStatus.RUNNING, timeout=30, what="run running")
    code, steered = _call(
        server, token, "POST", path, {"messages": [{"role": "user", "content": "go faster"}], "mode": "auto"}
    )
    assert code == 202 and (steered["inbox"], steered["run_id"]) == ("steered", run_id), steered
    w1.kill_group()
    farm.start("w2")
    sweep_until(first["dispatch_id"], DispatchStatus.ACKED, timeout=90)
    done = wait_until(lambda: (r := run_of(run_id)).status is RunStatus.DONE and r, timeout=30, what="done")
    records, _ = run_store.list_message_records(thread_id=thread_id, limit=100, include_internal=True)
    (steer_id,) = [r.message_id for r in records if r.message.text == "go faster"]
    runs = run_store.list_runs(thread_id=thread_id, limit=100).items
    as_input = sum(steer_id in (r.request.input_message_ids if r.request else []) for r in runs)
    taken = "steered: go faster" in (done.final_output or "")
    if (as_input, taken) not in ((1, False), (0, True)):
        raise SteeringLost(f"in {as_input} run input(s); the run answered {done.final_output!r}")
