"""Static files from the web process: whitenoise's files and headers, served natively under ASGI.

whitenoise is a WSGI library: its response streams an open file through a synchronous iterator. Under
ASGI Django can consume such a response only by reading it whole in a thread, and warns each time
("StreamingHttpResponse must consume synchronous iterators", django/http/response.py), which the web
log showed for every file an admin page loads. This middleware keeps whitenoise's lookup, compression
and cache headers, and under ASGI hands Django the same file as an asynchronous iterator (reads of
64 KiB in a worker thread); under WSGI (the tests' client) it is whitenoise's middleware unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import FileResponse, HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware  # type: ignore[import-untyped]

ASYNC_BLOCK_SIZE = 64 * 1024


async def _read_async(file: IO[bytes] | None) -> AsyncIterator[bytes]:
    if file is None:
        return
    while block := await asyncio.to_thread(file.read, ASYNC_BLOCK_SIZE):
        yield block


class StaticFilesMiddleware:
    """whitenoise's middleware for both kinds of request handler (Django picks the async one under
    ASGI)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        # whitenoise finds files, builds the response and its headers; its own get_response is never
        # called for an async chain (a request that is no static file goes on from here)
        self.whitenoise = WhiteNoiseMiddleware(get_response)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return self.whitenoise(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        whitenoise = self.whitenoise
        if whitenoise.autorefresh:
            static_file = await sync_to_async(whitenoise.find_file, thread_sensitive=False)(request.path_info)
        else:
            static_file = whitenoise.files.get(request.path_info)
        if static_file is None:
            response: Awaitable[HttpResponseBase] = self.get_response(request)
            return await response
        served = await sync_to_async(whitenoise.serve, thread_sensitive=False)(static_file, request)
        assert isinstance(served, FileResponse)
        # the open file (None for a HEAD or a 304) is streamed from an async iterator; closing the
        # response still closes the file (FileResponse registered it when whitenoise built it)
        served.streaming_content = _read_async(served.file_to_stream)
        return served
