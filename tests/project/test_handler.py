"""The web server's Django handler (awaken_project/handler.py): a synchronous view runs with its
middleware in one thread hop, and answers exactly as Django's own ASGI handler does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from asgiref import sync
from django.core.handlers.asgi import ASGIHandler

from awaken_project.handler import OneHopASGIHandler

Reply = tuple[int, dict[str, str], bytes]


def request(handler: ASGIHandler, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost"), *(headers or [])], "client": ("127.0.0.1", 5000),
        "server": ("localhost", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await asyncio.Event().wait()  # the client stays: Django cancels this listener when it is done
        raise AssertionError("unreachable")

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(dict(message))

    asyncio.run(handler(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


@contextmanager
def counted_hops() -> Iterator[list[object]]:
    """Every `sync_to_async` call made while inside: one trip from the event loop to a thread."""
    hops: list[object] = []
    original = sync.SyncToAsync.__call__

    async def counting(self: sync.SyncToAsync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(self.func)
        return await original(self, *args, **kwargs)

    sync.SyncToAsync.__call__ = counting  # type: ignore[method-assign]
    try:
        yield hops
    finally:
        sync.SyncToAsync.__call__ = original  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/threads/t-1", []),  # DRF's 401: authentication ran in the view
        ("/api/v1/threads/t-1", [(b"authorization", b"Token not-a-key")]),
        ("/healthz-not-a-route", []),  # no view: Django's 404
    ],
)
def test_the_answer_is_the_same_as_djangos(path: str, headers: list[tuple[bytes, bytes]]) -> None:
    ours, theirs = request(OneHopASGIHandler(), path, headers), request(ASGIHandler(), path, headers)
    assert ours[0] == theirs[0] and ours[2] == theirs[2]
    assert ours[1] == theirs[1]  # the middleware's headers included (X-Frame-Options, nosniff, Vary, …)
    assert "x-frame-options" in ours[1] and ours[1]["x-content-type-options"] == "nosniff"


def test_a_synchronous_view_runs_with_its_middleware_in_one_hop() -> None:
    path = "/api/v1/threads/t-1"
    ours, theirs = OneHopASGIHandler(), ASGIHandler()
    with counted_hops() as our_hops:
        assert request(ours, path)[0] == 401
    with counted_hops() as their_hops:
        assert request(theirs, path)[0] == 401
    # request_started's receivers, the chain with the view, the response's close
    assert len(our_hops) == 3, our_hops
    assert len(their_hops) >= 8, their_hops  # Django's: a hop per middleware method, and the view


def test_async_views_and_paths_without_a_view_take_djangos_async_chain() -> None:
    assert OneHopASGIHandler.resolves_to_sync_view("/api/v1/threads/t-1/mailbox")
    assert OneHopASGIHandler.resolves_to_sync_view("/api/v1/runs/r-1/events")  # a stream: a sync view
    assert not OneHopASGIHandler.resolves_to_sync_view("/api/v1/threads/t-1/runs/wait")  # waits on the loop
    assert not OneHopASGIHandler.resolves_to_sync_view("/api/v1/runs/r-1/join")
    assert not OneHopASGIHandler.resolves_to_sync_view("/static/admin/css/base.css")  # whitenoise's, async
