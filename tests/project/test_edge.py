"""The web edge (awaken_project/intake.py) on the real server process (gunicorn + uvicorn worker, as the
Procfile runs it) against the test database: stalled uploads hold no view permit, huge and anonymous
uploads are refused before their body is read, a stalled body gets 408, a chunked body is cut at the
limit, the body Django gets is the one sent, and the probes answer while every view permit is held."""

from __future__ import annotations

import contextlib
import json
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework.authtoken.models import Token

from runs_app.models import Thread
from tests.support.servers import WebServer, asgi_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HOST = "127.0.0.1"
STALLED = 200
BUDGET_S = 1.0
GIB = 1 << 30
SOCKET_TIMEOUT_S = 10.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the call that waited for it

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="edge-user", password="pw")
    return str(Token.objects.create(user=user).key)


@contextlib.contextmanager
def server(tmp_path: Path, **env: str) -> Iterator[WebServer]:
    with asgi_server(tmp_path, env=env) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT_S)


def read_answer(sock: socket.socket) -> Answer:
    """One response (a Content-Length body); `seconds` counts from this call."""
    began = time.monotonic()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        rest += chunk
    return Answer(int(status_line.split(" ", 2)[1]), headers, rest[:length], time.monotonic() - began)


def closed_by_server(sock: socket.socket, within_s: float = 2.0) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except ConnectionResetError:
        return True


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
    *,
    timeout: float = SOCKET_TIMEOUT_S,
) -> Answer:
    began = time.monotonic()
    with connect(port) as sock:
        sock.settimeout(timeout)
        sock.sendall(head(method, path, headers | {"Content-Length": str(len(body))}) + body)
        answer = read_answer(sock)
    answer.seconds = time.monotonic() - began
    return answer


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


def submit_body(text: str) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": text}]}).encode()


@contextlib.contextmanager
def descriptors(needed: int) -> Iterator[None]:
    """Raise this process's soft limit on open files to `needed` (within the hard limit) for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    assert wanted >= needed, f"the hard limit on open files ({hard}) is below {needed}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def stall_uploads(port: int, token: str, count: int) -> list[socket.socket]:
    """`count` uploads that send their headers and part of their body, then nothing: three in four to the
    API with a valid token (the worst case: they pass authentication), one in four to the admin login
    (a page anyone may post to)."""
    stalled: list[socket.socket] = []
    body = submit_body("never finished")
    for i in range(count):
        sock = connect(port)
        if i % 4:
            headers = auth(token) | {"Content-Type": "application/json", "Content-Length": str(len(body))}
            sock.sendall(head("POST", f"/api/v1/threads/t-stall-{i}/mailbox", headers) + body[:10])
        else:
            headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "500"}
            sock.sendall(head("POST", "/admin/login/", headers) + b"username=a")
        stalled.append(sock)
    return stalled


def unanswered(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(SOCKET_TIMEOUT_S)
    return False


# --- slow and stalled clients -------------------------------------------------------------------------


def test_200_stalled_uploads_leave_reads_and_probes_answering(tmp_path: Path, token: str) -> None:
    # given the server with its default 16 view permits and a body deadline longer than the test
    with descriptors(4 * STALLED + 256), server(tmp_path, AWAKEN_BODY_READ_TIMEOUT_MS="60000") as web:
        assert request(web.port, "GET", "/api/v1/threads", auth(token)).status == 200
        # when 200 uploads stall after part of their body
        stalled = stall_uploads(web.port, token, STALLED)
        try:
            # then a plain authenticated read and the liveness probe answer within the budget
            reads = [request(web.port, "GET", "/api/v1/threads", auth(token)) for _ in range(3)]
            health = request(web.port, "GET", "/healthz", {})
            ready = request(web.port, "GET", "/readyz", {})
            assert [r.status for r in reads] == [200, 200, 200]
            assert max(r.seconds for r in reads) < BUDGET_S, [r.seconds for r in reads]
            assert (health.status, health.json(), health.seconds < BUDGET_S) == (200, {"status": "ok"}, True)
            assert (ready.status, ready.json()) == (200, {"status": "ready"})
            # and every stalled upload is still open and waiting for its body (nothing answered them)
            assert all(unanswered(sock) for sock in stalled)
            # and one that sends the rest of its body is served with that body, unchanged
            body = submit_body("never finished")
            stalled[1].sendall(body[10:])
            answer = read_answer(stalled[1])
            assert answer.status == 201, answer.body
            assert Thread.objects.filter(id="t-stall-1").exists()
        finally:
            for sock in stalled:
                sock.close()


def test_a_stalled_or_dripping_body_gets_408_at_the_deadline_and_is_closed(
    tmp_path: Path, token: str
) -> None:
    with server(tmp_path, AWAKEN_BODY_READ_TIMEOUT_MS="1000") as web:
        path = "/api/v1/threads/t-408/mailbox"
        headers = auth(token) | {"Content-Type": "application/json", "Content-Length": "400"}
        with connect(web.port) as stalled, connect(web.port) as dripping:
            began = time.monotonic()
            stalled.sendall(head("POST", path, headers) + b'{"messa')
            dripping.sendall(head("POST", path, headers))
            # a byte every 100 ms: each read is quick, the whole body is not (the deadline is the body's)
            drip_stop = threading.Event()

            def drip() -> None:
                while not drip_stop.wait(0.1):
                    with contextlib.suppress(OSError):
                        dripping.sendall(b" ")

            dripper = threading.Thread(target=drip)
            dripper.start()
            try:
                answers = [read_answer(stalled), read_answer(dripping)]
            finally:
                drip_stop.set()
                dripper.join()
            elapsed = time.monotonic() - began
            for answer in answers:
                assert answer.status == 408
                assert answer.json() == {
                    "error": "the request body did not arrive in time",
                    "code": "body_timeout",
                }
                assert answer.headers["connection"] == "close"
            assert 0.9 < elapsed < 1.0 + 2 * BUDGET_S, elapsed
            assert closed_by_server(stalled) and closed_by_server(dripping)
        assert not Thread.objects.filter(id="t-408").exists()


def test_bodies_in_flight_are_bounded_per_process_with_503(tmp_path: Path, token: str) -> None:
    # given a process that may hold 4096 bytes of bodies at once
    with server(tmp_path, AWAKEN_BODY_BUFFER_MAX_BYTES="4096", AWAKEN_BODY_READ_TIMEOUT_MS="30000") as web:
        body = submit_body("x" * (1000 - len(submit_body(""))))
        headers = auth(token) | {"Content-Type": "application/json", "Content-Length": "1000"}
        uploads = [connect(web.port) for _ in range(7)]
        try:
            # when seven uploads each send 600 of their 1000 bytes (the seventh would make 4200)
            for i, sock in enumerate(uploads):
                sock.sendall(head("POST", f"/api/v1/threads/t-budget-{i}/mailbox", headers) + body[:600])
                if i < 6:
                    assert unanswered_for(sock, 0.2), f"upload {i} answered within the budget"
            # then the seventh is refused at once, and told when to come back
            refused = read_answer(uploads[6])
            assert (refused.status, refused.json()["code"], refused.headers["retry-after"]) == (
                503,
                "busy",
                "1",
            )
            assert closed_by_server(uploads[6])
            # and the first, completing within the budget (4000 bytes), is served with its body
            uploads[0].sendall(body[600:])
            assert read_answer(uploads[0]).status == 201
            # whose bytes are given back when it is done: a new whole upload fits again
            assert (
                request(web.port, "POST", "/api/v1/threads/t-budget-new/mailbox", headers, body).status == 201
            )
        finally:
            for sock in uploads:
                sock.close()


# --- huge bodies ---------------------------------------------------------------------------------------


def test_a_1_gib_announced_upload_is_refused_413_at_the_headers(tmp_path: Path, token: str) -> None:
    with server(tmp_path) as web:
        for headers in (auth(token), {}):  # authenticated or not: the size is checked first
            with connect(web.port) as sock:
                sock.sendall(
                    head("POST", "/api/v1/threads/t-huge/mailbox", headers | {"Content-Length": str(GIB)})
                )
                answer = read_answer(sock)  # not one byte of the body was sent
                assert answer.status == 413 and answer.seconds < BUDGET_S, (answer.status, answer.seconds)
                assert answer.json() == {"error": "request body too large", "code": "body_too_large"}
                assert closed_by_server(sock)
        # (and on a path outside the API too)
        with connect(web.port) as sock:
            sock.sendall(head("POST", "/admin/login/", {"Content-Length": str(GIB)}))
            assert read_answer(sock).status == 413
        # a Content-Length that is not a length is a 400 (the HTTP parser's or the intake's), never a 500
        for bad in ("abc", "-1", "1, 2", "0x10", "1e3", "\xb2"):
            with connect(web.port) as sock:
                sock.sendall(
                    head("POST", "/api/v1/threads/t-huge/mailbox", auth(token) | {"Content-Length": bad})
                )
                answer = read_answer(sock)
                assert answer.status == 400, (bad, answer)


def test_a_chunked_body_past_the_limit_is_cut_with_413(tmp_path: Path, token: str) -> None:
    with server(tmp_path, AWAKEN_API_MAX_BODY_BYTES="2048") as web:
        path = "/api/v1/threads/t-chunked/mailbox"
        headers = auth(token) | {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        with connect(web.port) as sock:
            sock.sendall(head("POST", path, headers))
            sent = 0
            while sent <= 2048:  # 1000-byte chunks; no answer while the body is within the limit
                assert unanswered_for(sock, 0.2), f"answered after only {sent} bytes"
                sock.sendall(b"3e8\r\n" + b" " * 1000 + b"\r\n")
                sent += 1000
            answer = read_answer(sock)  # the chunk that crossed the limit is answered
            assert (answer.status, sent) == (413, 3000)
            assert closed_by_server(sock)
        # a body at the limit passes the edge (and is the view's to judge); one byte more is refused
        at_limit = submit_body("x" * (2048 - len(submit_body(""))))
        assert len(at_limit) == 2048
        json_headers = auth(token) | {"Content-Type": "application/json"}
        assert request(web.port, "POST", path, json_headers, at_limit).status == 201
        assert request(web.port, "POST", path, json_headers, at_limit + b" ").status == 413


# --- anonymous clients ---------------------------------------------------------------------------------


ANONYMOUS = [
    (None, "not_authenticated"),
    ("Basic YTpi", "not_authenticated"),
    ("Token", "authentication_failed"),
    ("Token a b", "authentication_failed"),
    ("Token " + "0" * 40, "authentication_failed"),
    ("Token " + "0" * 41, "authentication_failed"),
    ("Token \xe9\xe9", "authentication_failed"),
]


def test_an_anonymous_upload_is_refused_401_before_its_body_is_sent(tmp_path: Path) -> None:
    with server(tmp_path) as web:
        for authorization, code in ANONYMOUS:
            headers = {"Content-Type": "application/json", "Content-Length": "100", "Expect": "100-continue"}
            if authorization is not None:
                headers["Authorization"] = authorization
            with connect(web.port) as sock:
                sock.sendall(head("POST", "/api/v1/threads/t-anon/mailbox", headers))
                answer = read_answer(sock)  # the first thing back: no "100 Continue" invited the body
                assert answer.status == 401 and answer.seconds < BUDGET_S, (authorization, answer)
                assert answer.json()["code"] == code and set(answer.json()) == {"error", "code"}, (
                    authorization
                )
                assert answer.headers["www-authenticate"] == "Token"
                assert closed_by_server(sock), authorization
    assert not Thread.objects.filter(id="t-anon").exists()


def test_a_session_cookie_passes_the_edge_and_django_decides(tmp_path: Path) -> None:
    with server(tmp_path) as web:
        answer = request(web.port, "GET", "/api/v1/threads", {"Cookie": "sessionid=forged"})
        # Django's answer (the session is not valid), in the API's shape
        assert answer.status == 401 and answer.json()["code"] == "not_authenticated"
        # the browser's docs page is not the API's to refuse: it sends the browser to the login page
        assert request(web.port, "GET", "/api/v1/docs/", {}).status == 302


# --- the probes never queue behind the view permits ------------------------------------------------------


def test_probes_answer_while_every_view_permit_is_held(tmp_path: Path, token: str) -> None:
    # given one view permit, held by a submit whose view waits on a thread row this test locks
    with server(tmp_path, AWAKEN_WEB_MAX_CONCURRENT_VIEWS="1") as web:
        json_headers = auth(token) | {"Content-Type": "application/json"}
        created = request(web.port, "POST", "/api/v1/threads/t-held/mailbox", json_headers, submit_body("a"))
        assert created.status == 201, created.body
        with transaction.atomic():
            Thread.objects.select_for_update().get(id="t-held")
            holder = connect(web.port)
            body = submit_body("b")
            holder.sendall(
                head(
                    "POST",
                    "/api/v1/threads/t-held/mailbox",
                    json_headers | {"Content-Length": str(len(body))},
                )
                + body
            )
            blocked = connect(web.port)
            blocked.sendall(head("GET", "/api/v1/threads", auth(token) | {"Content-Length": "0"}))
            # then the read waits for the permit (it is held) ...
            assert unanswered_for(blocked, 0.5)
            # ... while the probes answer at once
            health = request(web.port, "GET", "/healthz", {})
            ready = request(web.port, "GET", "/readyz", {})
            assert (health.status, health.seconds < BUDGET_S) == (200, True), health
            assert (ready.status, ready.json(), ready.seconds < BUDGET_S) == (200, {"status": "ready"}, True)
        # when the lock goes, both views finish
        assert read_answer(holder).status == 201
        assert read_answer(blocked).status == 200
        holder.close()
        blocked.close()


def unanswered_for(sock: socket.socket, seconds: float) -> bool:
    """Nothing (neither an answer nor a close) arrives on `sock` within `seconds`."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return not readable


def test_with_postgresql_unreachable_a_token_check_is_503_not_500(tmp_path: Path) -> None:
    unreachable = "postgresql://postgres@127.0.0.1:1/nowhere"
    with asgi_server(tmp_path, env={"DATABASE_URL": unreachable}) as web:
        # (the lookup waits for a pooled connection up to the pool's timeout, 10 s, then gives up)
        answer = request(web.port, "GET", "/api/v1/threads", auth("0" * 40), timeout=30)
        ready = request(web.port, "GET", "/readyz", {})
        health = request(web.port, "GET", "/healthz", {})
    assert (answer.status, answer.json()["code"], answer.headers["retry-after"]) == (503, "unavailable", "1")
    assert (ready.status, ready.json()["down"]) == (503, ["postgresql: OperationalError"])
    assert health.status == 200


def test_readyz_reports_a_redis_outage_without_waiting_on_it(tmp_path: Path) -> None:
    with server(tmp_path, REDIS_URL="redis://127.0.0.1:1/0") as web:
        answer = request(web.port, "GET", "/readyz", {})
    assert (answer.status, answer.json()) == (
        503,
        {"status": "unavailable", "down": ["redis: ConnectionError"]},
    )
    assert answer.seconds < BUDGET_S  # a refused connection is reported at once, not after a timeout
