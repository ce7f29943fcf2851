"""Issue 18, three items again, through the HTTP API of the REAL web server process (gunicorn + uvicorn
worker, as the Procfile's web line; tests/support/servers.py) instead of Django's in-process clients:

- the anonymous throttle and the admin-login limit, configured through the server's environment and
  counted in the shared Redis by two server processes (in-process: tests/project/test_throttling.py);
- ten concurrent decisions on one suspended tool call: one 202, nine 409 `already_decided`, one resume
  (in-process: tests/runs_app/api/test_decisions_once.py);
- a delayed start beyond the longest doorbell countdown: the server sends no countdown for it (the
  broker holds nothing for it), the row is parked, and beat's sweep task starts it when it comes due
  (in-process: tests/mailbox_app/realtime/test_doorbells.py).

The Celery worker is the in-process one of the other real-server tests (tests/conftest.py): the agent
runs with the test settings, the web server with its environment.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.authtoken.models import Token

from awaken_project.celery import app
from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.realtime import doorbells
from runs_app import store as run_store
from runs_app.models import RunDecision
from tests.runs_app.api.test_decisions_once import _assert_resumed_once, _tool_call_started, _waiting
from tests.support.api import new_user
from tests.support.servers import WebServer, asgi_server
from tests.support.waiting import wait_until

RUNS = "/api/v1/runs"
SENDERS = 10


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    """One request on a fresh connection to the server on `port`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, raw)
    finally:
        conn.close()


def post_json(port: int, token: str, path: str, body: Any) -> Answer:
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    return request(port, "POST", path, body=json.dumps(body).encode(), headers=headers)


def not_near_a_window_edge(period_s: int) -> None:
    """Counting starts well inside a fixed window, so the whole burst lands in one."""
    left = period_s - time.time() % period_s
    if left < 30:
        time.sleep(left + 0.1)


def an_address() -> str:
    """A client address no other test uses (the counts live in the shared Redis)."""
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


def a_token(name: str) -> str:
    user = new_user(f"{name}-{uuid.uuid4().hex[:8]}")
    return str(Token.objects.create(user=user).key)


def all_at_once(count: int, send: Callable[[int], Any]) -> list[Any]:
    """`send(k)` for k in 0..count-1, each in its own thread, released together by a barrier; a raised
    exception is the thread's answer."""
    barrier = threading.Barrier(count)
    answers: list[Any] = [None] * count

    def body(k: int) -> None:
        try:
            barrier.wait(10)
            answers[k] = send(k)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            answers[k] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


# --- 1. throttling ---------------------------------------------------------------------------------


ANON_ENV = {"AWAKEN_API_ANON_THROTTLE_RATE": "3/day"}
NOT_A_SESSION = {"Cookie": "sessionid=not-a-session"}  # no token: the intake lets Django decide


@pytest.mark.slow
def test_anonymous_requests_past_the_rate_are_429_across_two_real_servers(
    transactional_db: None, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """Three anonymous requests a day from one address (AWAKEN_API_ANON_THROTTLE_RATE in the servers'
    environment), whichever of the two processes answers: the fourth is 429 with Retry-After. The requests
    carry a session cookie that is no session, so the intake hands them to Django
    (awaken_project/intake.py)."""
    not_near_a_window_edge(86_400)
    token = a_token("throttled")
    with asgi_server(tmp_path, ANON_ENV) as first, asgi_server(tmp_path, ANON_ENV) as second:
        # (clean_redis emptied the counts before the servers started; every request comes from 127.0.0.1)
        assert request(first.port, "GET", RUNS, headers=NOT_A_SESSION).status == 401
        assert request(first.port, "GET", RUNS, headers=NOT_A_SESSION).status == 401
        # the second process sees the first one's two: one left
        assert request(second.port, "GET", RUNS, headers=NOT_A_SESSION).status == 401
        for port in (second.port, first.port):
            refused = request(port, "GET", RUNS, headers=NOT_A_SESSION)
            assert refused.status == 429, refused
            assert 0 < int(refused.headers["retry-after"]) <= 86_400, refused.headers
        # a valid token is not an anonymous caller: its own (user) budget
        mine = request(first.port, "GET", RUNS, headers={"Authorization": f"Token {token}"})
        assert mine.status == 200, mine
        for server in (first, second):
            assert "Traceback" not in server.log_tail(), server.log_tail()


@pytest.mark.slow
def test_a_forged_x_forwarded_for_is_no_new_budget_on_the_real_server(
    transactional_db: None, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """No proxy configured (AWAKEN_API_NUM_PROXIES=0): an anonymous caller out of budget who sends
    X-Forwarded-For with a new address each time is still refused."""
    not_near_a_window_edge(86_400)
    with asgi_server(tmp_path, ANON_ENV) as web:
        assert [request(web.port, "GET", RUNS, headers=NOT_A_SESSION).status for _ in range(4)] == [
            401
        ] * 3 + [429]
        forged = request(web.port, "GET", RUNS, headers={**NOT_A_SESSION, "X-Forwarded-For": an_address()})
        assert forged.status == 429, forged


@pytest.mark.slow
def test_requests_without_a_valid_token_are_counted_by_the_real_server(
    transactional_db: None, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """No credentials, then wrong tokens, from one address: past three a day, 429 (not 401 forever)."""
    not_near_a_window_edge(86_400)
    with asgi_server(tmp_path, ANON_ENV) as web:
        answers = [request(web.port, "GET", RUNS).status for _ in range(3)]
        assert answers == [401, 401, 401]
        guesses = [
            request(web.port, "GET", RUNS, headers={"Authorization": f"Token {k:040d}"}).status
            for k in range(3)
        ]
        assert guesses == [429, 429, 429], guesses


CSRF_FIELD = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


@dataclass
class Browser:
    """An admin login form's client from one address (behind one proxy: X-Forwarded-For names it)."""

    address: str
    cookie: str = ""
    form_token: str = ""

    def open_form(self, port: int) -> None:
        page = request(port, "GET", "/admin/login/", headers={"X-Forwarded-For": self.address})
        assert page.status == 200, page
        match = CSRF_FIELD.search(page.body)
        assert match is not None, page.body[:500]
        self.form_token = match.group(1).decode()
        set_cookie = page.headers.get("set-cookie", "")
        cookie = re.search(r"csrftoken=([^;]+)", set_cookie)
        assert cookie is not None, page.headers
        self.cookie = f"csrftoken={cookie.group(1)}"

    def login(self, port: int, username: str, password: str) -> Answer:
        if not self.form_token:
            self.open_form(port)
        form = {
            "csrfmiddlewaretoken": self.form_token,
            "username": username,
            "password": password,
            "next": "/admin/",
        }
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": self.cookie,
            "X-Forwarded-For": self.address,
        }
        return request(
            port, "POST", "/admin/login/?next=/admin/", body=urlencode(form).encode(), headers=headers
        )


@pytest.mark.slow
def test_bad_admin_logins_are_refused_after_the_limit_across_two_real_servers(
    transactional_db: None, tmp_path: Path
) -> None:
    """AWAKEN_ADMIN_LOGIN_MAX_FAILURES=3 in both servers' environment: two failures on one process and
    one on the other use up the budget of (address, username); the fourth attempt, even with the right
    password, is refused (429, Retry-After = the lockout) by both. Another address, or another username
    from this address, is not locked out."""
    name = f"admin{uuid.uuid4().hex[:8]}"
    get_user_model().objects.create_superuser(name, f"{name}@example.com", "right-password")
    env = {
        "AWAKEN_ADMIN_LOGIN_MAX_FAILURES": "3",
        "AWAKEN_ADMIN_LOGIN_LOCKOUT_S": "600",
        "AWAKEN_API_NUM_PROXIES": "1",  # the client address is X-Forwarded-For's
    }
    with asgi_server(tmp_path, env) as first, asgi_server(tmp_path, env) as second:
        attacker = Browser(an_address())
        failures = [
            attacker.login(first.port, name, "wrong").status,
            attacker.login(first.port, name, "wrong").status,
            attacker.login(second.port, name, "wrong").status,
        ]
        assert failures == [200, 200, 200]  # the form again, with its error (not a CSRF 403)
        for port in (second.port, first.port):
            refused = attacker.login(port, name, "right-password")
            assert refused.status == 429, refused
            assert b"Too many failed logins" in refused.body and b"10 minutes" in refused.body
            assert refused.headers["retry-after"] == "600"
        assert attacker.login(first.port, "someone-else", "wrong").status == 200
        owner = Browser(an_address())
        welcome = owner.login(second.port, name, "right-password")
        assert welcome.status == 302 and welcome.headers["location"] == "/admin/", welcome
        for server in (first, second):
            assert "Traceback" not in server.log_tail(), server.log_tail()


# --- 2. ten concurrent decisions ---------------------------------------------------------------------


def _decide_ten_times(web: WebServer, token: str, path: str, call_id: str) -> int:
    """Ten decisions for `call_id` at once over ten connections: exactly one 202 and nine 409
    `already_decided` naming the field and the call; the accepted click's number."""

    def send(k: int) -> Answer:
        body = {"tool_call_id": call_id, "action": "resume", "payload": {"click": k}}
        return post_json(web.port, token, path, body)

    answers = all_at_once(SENDERS, send)
    bad = [a for a in answers if not isinstance(a, Answer)]
    assert not bad, bad
    codes = sorted(a.status for a in answers)
    assert codes == [202] + [409] * (SENDERS - 1), [(a.status, a.body) for a in answers]
    for refused in (a for a in answers if a.status == 409):
        body = refused.json()
        assert body["code"] == "already_decided" and body["field"] == "tool_call_id", body
        assert call_id in body["error"]
    (accepted,) = [k for k, a in enumerate(answers) if a.status == 202]
    return accepted


@pytest.mark.slow
def test_ten_decisions_on_a_durably_waiting_call_through_the_real_server_resume_it_once(
    mailbox_worker: Any, tmp_path: Path
) -> None:
    with asgi_server(tmp_path) as web:
        token = a_token("clicker")
        thread_id = f"t-real-once-{uuid.uuid4().hex[:6]}"
        asked = post_json(
            web.port,
            token,
            f"/api/v1/threads/{thread_id}/mailbox",
            {"messages": [{"role": "user", "content": "ask ship?"}]},
        )
        assert asked.status == 201, asked
        run_id = asked.json()["run_id"]
        waiting = wait_until(lambda: _waiting(run_id), timeout=30, what="the run waiting durably")
        assert waiting.waiting is not None
        call_id = waiting.waiting.tickets[0].tool_call_id
        assert store.list_dispatches(thread_id, [DispatchStatus.QUEUED, DispatchStatus.CLAIMED]) == []

        click = _decide_ten_times(web, token, f"/api/v1/threads/{thread_id}/decision", call_id)

        _assert_resumed_once(thread_id, run_id, click, activations=2)  # the ask's, then one resume
        assert RunDecision.objects.get(run_id=run_id).via == "queued"
        late = post_json(
            web.port, token, f"/api/v1/runs/{run_id}/decision", {"tool_call_id": call_id, "action": "cancel"}
        )
        assert late.status == 409 and late.json()["code"] == "already_decided", late
        assert "Traceback" not in web.log_tail(), web.log_tail()


@pytest.mark.slow
def test_ten_decisions_on_a_call_suspended_live_through_the_real_server_are_delivered_once(
    mailbox_worker: Any, engine_settings: Any, tmp_path: Path
) -> None:
    engine_settings.AWAKEN_LIVE_SUSPEND_HOLD_MS = 30_000  # echo's `ask` waits in the worker
    with asgi_server(tmp_path) as web:
        token = a_token("live-clicker")
        thread_id = f"t-real-live-{uuid.uuid4().hex[:6]}"
        asked = post_json(
            web.port,
            token,
            f"/api/v1/threads/{thread_id}/mailbox",
            {"messages": [{"role": "user", "content": "ask deploy?"}]},
        )
        assert asked.status == 201, asked
        run_id = asked.json()["run_id"]
        call_id = wait_until(lambda: _tool_call_started(run_id), timeout=30, what="the tool call asked")
        run = run_store.load_run(run_id=run_id)
        assert run is not None and run.status is RunStatus.RUNNING  # held live by the worker

        click = _decide_ten_times(web, token, f"/api/v1/runs/{run_id}/decision", call_id)

        # one activation: the decision reached the suspended run live; no resume was queued
        _assert_resumed_once(thread_id, run_id, click, activations=1)
        assert RunDecision.objects.get(run_id=run_id).via == "live"
        assert "Traceback" not in web.log_tail(), web.log_tail()


# --- 3. a delayed start longer than the longest countdown ---------------------------------------------

MAX_COUNTDOWN_MS = 2_000


@dataclass(frozen=True)
class Bell:
    task: str
    args: list[Any]
    eta_ms: int | None  # when the message asks to run (None: at once)
    sent_ms: int  # when it was published (for the broker's: when it was read there)


def _eta_ms(headers: dict[str, Any]) -> int | None:
    eta = headers.get("eta")
    return int(datetime.fromisoformat(eta).timestamp() * 1000) if eta else None


def broker_messages(broker: redis.Redis) -> list[Bell]:
    """Every task message waiting in the broker's queues (kombu's Redis transport: a list per queue,
    each entry a JSON envelope whose base64 body is [args, kwargs, embed])."""
    found: list[Bell] = []
    read_at = now_ms()
    for key in broker.scan_iter():
        if broker.type(key) != b"list":
            continue
        for raw in broker.lrange(key, 0, -1):
            try:
                envelope = json.loads(raw)
                headers = envelope["headers"]
                args = json.loads(base64.b64decode(envelope["body"]))[0]
            except (ValueError, KeyError, TypeError):
                continue  # not a task message
            found.append(Bell(str(headers.get("task")), list(args), _eta_ms(headers), read_at))
    return found


@pytest.fixture
def published() -> Iterator[list[Bell]]:
    """Every Celery message this process (the test's worker, running beat's sweep) publishes."""
    sent: list[Bell] = []
    lock = threading.Lock()

    def record(sender: str, body: Any, headers: dict[str, Any], **_: Any) -> None:
        with lock:
            sent.append(Bell(sender, list(body[0]), _eta_ms(headers), now_ms()))

    before_task_publish.connect(record, weak=False)
    yield sent
    before_task_publish.disconnect(record)


def _for(bells: list[Bell], dispatch_id: str) -> list[Bell]:
    return [b for b in bells if b.task == doorbells.DISPATCH_TASK and dispatch_id in b.args]


def _acked(dispatch_id: str) -> bool:
    dispatch = store.load_dispatch(dispatch_id)
    return dispatch is not None and dispatch.status is DispatchStatus.ACKED


@pytest.mark.slow
def test_a_start_past_the_longest_countdown_is_parked_by_the_real_server_and_swept_on_time(
    transactional_db: None,
    engine_settings: Any,
    clean_redis: redis.Redis,
    published: list[Bell],
    tmp_path: Path,
) -> None:
    """The server runs with AWAKEN_DOORBELL_MAX_COUNTDOWN_MS=2000. A start 1 s off is a countdown in the
    broker; a start 5 s off sends nothing (the broker holds no message for it) and stays queued in
    PostgreSQL; beat's sweep task, sent every second as beat would, rings it ahead of its time with a
    countdown within the bound, and it runs at its time."""
    engine_settings.AWAKEN_DOORBELL_MAX_COUNTDOWN_MS = MAX_COUNTDOWN_MS  # the sweep's worker, this process
    broker = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    env = {"AWAKEN_DOORBELL_MAX_COUNTDOWN_MS": str(MAX_COUNTDOWN_MS)}
    try:
        with asgi_server(tmp_path, env) as web:
            token = a_token("later")
            say = {"messages": [{"role": "user", "content": "hi"}]}
            near = post_json(
                web.port, token, "/api/v1/threads/t-real-near/mailbox", {**say, "after_seconds": 1}
            )
            far = post_json(
                web.port, token, "/api/v1/threads/t-real-far/mailbox", {**say, "after_seconds": 5}
            )
            assert near.status == 201 and far.status == 201, (near, far)
            near_id, far_id = near.json()["dispatch_id"], far.json()["dispatch_id"]
            near_row, far_row = store.load_dispatch(near_id), store.load_dispatch(far_id)
            assert near_row is not None and far_row is not None

            # no worker consumes yet: what the server sent is in the broker
            [near_bell] = wait_until(
                lambda: _for(broker_messages(broker), near_id), timeout=10, what="the near start's doorbell"
            )
            assert near_bell.eta_ms is not None and abs(near_bell.eta_ms - near_row.available_at) < 1_000
            queued = broker_messages(broker)
            assert _for(queued, far_id) == [], queued
            assert all(b.eta_ms is None or b.eta_ms - b.sent_ms <= MAX_COUNTDOWN_MS for b in queued), queued
            assert far_row.status is DispatchStatus.QUEUED  # parked: the row is the record
            assert far_row.available_at - far_row.created_at == 5_000

            with start_worker(
                app,
                pool="threads",
                concurrency=4,
                perform_ping_check=False,
                loglevel="WARNING",
                shutdown_timeout=15,
            ):
                # the near start runs on its countdown alone, before any sweep
                wait_until(lambda: _acked(near_id), timeout=30, what="the near start done")
                parked = store.load_dispatch(far_id)
                assert parked is not None and parked.status is DispatchStatus.QUEUED
                # beat's sweep task, every second, until the far start has run
                sweeps = 0
                while not _acked(far_id):
                    assert sweeps < 30, "the far start not run after 30 sweeps"
                    app.send_task("mailbox.sweep")
                    sweeps += 1
                    deadline = time.monotonic() + 1.0
                    wait_until(lambda: time.monotonic() >= deadline or _acked(far_id), timeout=10)  # noqa: B023
            assert "Traceback" not in web.log_tail(), web.log_tail()
    finally:
        broker.close()

    done = store.load_dispatch(far_id)
    assert done is not None and done.completed_at is not None
    run = run_store.load_run(run_id=done.run_id)
    assert run is not None and run.status is RunStatus.DONE and run.final_output == "echo: hi"
    assert run.started_at is not None and run.started_at * 1000 >= far_row.available_at - 999  # (seconds)
    rings = _for(published, far_id)
    assert rings, published  # the sweep rang it (the server never did)
    for bell in published:  # every countdown this process sent was within the bound
        assert bell.eta_ms is None or bell.eta_ms - bell.sent_ms <= MAX_COUNTDOWN_MS + 50, bell
    lateness_ms = done.completed_at - far_row.available_at
    assert 0 <= lateness_ms < 1_000, f"finished {lateness_ms} ms after its time"  # rung ahead, not late
    print(f"far start: {sweeps} sweeps, finished {lateness_ms} ms after its time, rung {len(rings)}x")
