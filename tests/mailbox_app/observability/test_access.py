"""`GET /metrics` on the real ASGI server never answers 500, whatever the headers: non-ASCII and odd
`Authorization` values, repeated and huge headers (mailbox_app/observability/access.py compares bytes)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mailbox_app.observability.access import bearer_matches
from tests.support.servers import WebServer, asgi_server

TOKEN = "metrics-token"
HOST = "127.0.0.1"
REFUSED = {400, 403, 431}  # the parser's refusal, access denied, headers too large


@pytest.fixture(scope="module")
def metrics_server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """One server for every case: only the token opens /metrics (no network may scrape without it)."""
    env = {"AWAKEN_METRICS_TOKEN": TOKEN, "AWAKEN_METRICS_ALLOWED_NETWORKS": ""}
    with asgi_server(tmp_path_factory.mktemp("metrics"), env=env) as web:
        yield web
        log = web.log_tail()
    # (Django logs the hostile Host's DisallowedHost with its traceback; it answered 400)
    assert "Internal Server Error" not in log and '" 500' not in log, log


def answer_status(port: int, headers: list[bytes], host: bytes = HOST.encode()) -> int | None:
    """The status of `GET /metrics` with these raw header lines; None if the server closed instead."""
    raw = b"GET /metrics HTTP/1.1\r\nHost: " + host + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
    with socket.create_connection((HOST, port), timeout=10) as sock:
        try:
            sock.sendall(raw + b"Connection: close\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while the headers were still being sent
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
        except ConnectionResetError:
            return None
    return int(data.split(b" ", 2)[1])


HOSTILE: list[tuple[str, list[bytes]]] = [
    ("utf-8 non-ascii token", [b"Authorization: Bearer \xc3\xa9t\xc3\xa9"]),
    ("latin-1 byte token", [b"Authorization: Bearer \xe9"]),
    ("token plus a non-ascii byte", [b"Authorization: Bearer " + TOKEN.encode() + b"\xe9"]),
    ("invalid utf-8", [b"Authorization: Bearer \xff\xfe\xfd"]),
    ("scheme only", [b"Authorization: Bearer"]),
    ("empty", [b"Authorization: "]),
    ("another scheme", [b"Authorization: Basic bWV0cmljczp0b2tlbg=="]),
    ("the token under another scheme", [b"Authorization: Token " + TOKEN.encode()]),
    ("token without scheme", [b"Authorization: " + TOKEN.encode()]),
    (
        "two authorization headers",
        [b"Authorization: Bearer nope", b"Authorization: Bearer " + TOKEN.encode()],
    ),
    ("control character", [b"Authorization: Bearer \x01" + TOKEN.encode()]),
    ("8 KiB token", [b"Authorization: Bearer " + b"A" * 8192]),
    ("64 KiB token", [b"Authorization: Bearer " + b"A" * 65536]),
    ("1 MiB header", [b"X-Junk: " + b"j" * (1 << 20)]),
    ("500 headers", [b"X-H%d: v" % i for i in range(500)]),
    ("non-ascii header name", [b"X-\xe9: v"]),
    ("tab and spaces", [b"Authorization: \tBearer \t x "]),
]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("case", "headers"), HOSTILE, ids=[case for case, _ in HOSTILE])
def test_hostile_headers_never_get_a_500(metrics_server: WebServer, case: str, headers: list[bytes]) -> None:
    status = answer_status(metrics_server.port, headers)
    assert status is None or status in REFUSED, (case, status)
    assert answer_status(metrics_server.port, []) == 403  # and the server still answers


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_token_opens_it_and_a_hostile_host_is_a_400(metrics_server: WebServer) -> None:
    assert answer_status(metrics_server.port, [b"Authorization: Bearer " + TOKEN.encode()]) == 200
    assert answer_status(metrics_server.port, [b"Authorization: bearer   " + TOKEN.encode() + b"  "]) == 200
    assert answer_status(metrics_server.port, [], host=b"h\xe9st") == 400


@pytest.mark.parametrize(
    ("authorization", "token", "expected"),
    [
        ("Bearer é", "é", False),  # a header is latin-1-decoded bytes: "é" is not UTF-8's 0xc3 0xa9
        ("Bearer Ã©", "é", True),  # the UTF-8 bytes of "é", as Django hands them over
        ("Bearer \ud800", "x", False),  # a lone surrogate (only an in-process caller can pass one)
        ("Bearer ☃", "☃", True),  # beyond latin-1: taken as UTF-8
        ("Bearer x", "", False),  # no token set: nothing matches
        ("Bearer ", "", False),
    ],
)
def test_bearer_matches_compares_bytes(authorization: str, token: str, expected: bool) -> None:
    assert bearer_matches(authorization, token) is expected
