"""Django's ASGI handler with one thread hop for a synchronous view instead of one per middleware.

Under ASGI Django runs its middleware chain in async mode: every middleware written the classic way
(`MiddlewareMixin`, all of Django's own) runs its `process_request` / `process_view` /
`process_response` through `sync_to_async`, each a trip from the event loop to the request's thread and
back, and then the view itself (every API view here is a synchronous DRF view) is one more: about ten
hops a request. This handler builds the chain twice: Django's async one, and the synchronous one a WSGI
server would run. A request whose URL resolves to a synchronous view runs the whole synchronous chain,
middleware and view, in one `sync_to_async` call on the request's thread (awaken_project/asgi.py's
`BoundedViews` picks that thread); a request for an async view (the run wait) or for no view at all
(static files, 404s) takes Django's async chain unchanged. Both chains are the same middleware, so a
response is the same either way (tests/project/test_handler.py).
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver


class OneHopASGIHandler(ASGIHandler):
    """`ASGIHandler` whose synchronous views run with their middleware in one thread hop."""

    def __init__(self) -> None:
        super().__init__()
        self._sync = BaseHandler()
        self._sync.load_middleware(is_async=False)
        self._sync_run = sync_to_async(self._sync.get_response, thread_sensitive=True)

    async def run_get_response(self, request: HttpRequest) -> HttpResponseBase:
        if not self.resolves_to_sync_view(request.path_info):
            response: HttpResponseBase = await super().run_get_response(request)
            return response
        response = await self._sync_run(request)
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        return response

    @staticmethod
    def resolves_to_sync_view(path: str) -> bool:
        try:
            match = get_resolver().resolve(path)
        except Resolver404:
            return False
        view: Any = match.func
        return not iscoroutinefunction(view)
