"""Static files under ASGI (the web server's handler): served whole, with whitenoise's headers, and
without Django's warning about a synchronous iterator (pytest turns warnings into errors here; the
web log showed one for every file an admin page loads before awaken_project/staticfiles.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.contrib.staticfiles import finders
from django.core.handlers.asgi import ASGIHandler


def asgi_get(path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    """One request through a fresh ASGIHandler (the full middleware chain, async mode)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
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

    asyncio.run(ASGIHandler()(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


def found(path: str) -> Path:
    located = finders.find(path)
    assert isinstance(located, str), path
    return Path(located)


def test_a_static_file_under_asgi_is_whole_and_warns_nothing(settings: Any) -> None:
    settings.WHITENOISE_USE_FINDERS = True  # found in the apps' static dirs, no collectstatic needed
    css = found("admin/css/base.css").read_bytes()
    status, headers, body = asgi_get("/static/admin/css/base.css")
    assert status == 200 and body == css
    assert headers["content-type"].startswith("text/css") and int(headers["content-length"]) == len(css)
    etag = headers["etag"]
    # big enough to take several reads (64 KiB each)
    bundle = found("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js").read_bytes()
    assert len(bundle) > 3 * 64 * 1024
    assert asgi_get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")[2] == bundle
    # no body to stream: a HEAD, a 304
    status, headers, body = asgi_get("/static/admin/css/base.css", method="HEAD")
    assert status == 200 and body == b""
    status, _, body = asgi_get("/static/admin/css/base.css", headers=[(b"if-none-match", etag.encode())])
    assert status == 304 and body == b""


def test_other_paths_go_on_to_the_views(settings: Any) -> None:
    settings.WHITENOISE_USE_FINDERS = True
    status, _, body = asgi_get("/healthz")
    assert status == 200 and body == b'{"status": "ok"}'
    assert asgi_get("/static/admin/css/no-such.css")[0] == 404
