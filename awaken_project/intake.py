"""What every HTTP request passes before Django, a view permit or a DB connection is spent on it.

In order, on the event loop (no thread, no permit):

1. `/healthz` and `/readyz` are answered here (awaken_project/probes.py): never behind the permits.
2. A `Content-Length` above the body limit (AWAKEN_API_MAX_BODY_BYTES, Django's
   DATA_UPLOAD_MAX_MEMORY_SIZE) answers 413 at the headers, before a byte of the body is read.
3. A request to the API (`/api/`, but the browser's docs page) without a session cookie and without a
   valid `Authorization: Token <key>` answers 401 before its body is read — and counts against its
   client address's anonymous budget (AWAKEN_API_ANON_THROTTLE_RATE, awaken_project/throttling.py, the
   same shared counter Django's throttle uses): once that is spent it answers 429 with `Retry-After`,
   so guessing tokens is throttled like any anonymous request. The key is checked in the
   per-process token cache (runs_app/api/auth.py); a miss is one query on a small executor of its own
   (`lookup_threads` threads, at most MAX_PENDING_LOOKUPS waiting, else 503). A session cookie is let
   through: Django decides, but its body is still read under 4.
4. The body is read whole under a deadline (AWAKEN_BODY_READ_TIMEOUT_MS from the headers): a client that
   stalls gets 408; a chunked body that grows past the limit is cut there with 413. The bodies the
   process holds at once (read, or handed to Django and not answered yet) are bounded by
   AWAKEN_BODY_BUFFER_MAX_BYTES: past it a request gets 503 with `Retry-After` instead of memory (the
   body is read here, outside the view permits, so many connections could otherwise each hold one).

Every refusal has the API's error shape `{"error", "code", "field"?}` and, when a body was announced
that will not be read, closes the connection (`Connection: close`). Django then gets the body as one
`http.request` message and, after it, the server's own `receive` (so a stream still hears the client
leave).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from django import db
from django.http.cookie import parse_cookie
from rest_framework.exceptions import AuthenticationFailed

from awaken_project.probes import PATHS as PROBE_PATHS
from awaken_project.probes import Probes
from awaken_project.throttling import SharedAnonRateThrottle
from runs_app.api.auth import tokens

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)
MAX_PENDING_LOOKUPS = 256
NO_CREDENTIALS = "Authentication credentials were not provided."


@dataclass(frozen=True, slots=True)
class IntakePolicy:
    max_body_bytes: int | None  # None: no limit (Django's DATA_UPLOAD_MAX_MEMORY_SIZE = None)
    body_timeout_s: float
    max_buffered_bytes: int | None = None  # the bodies the whole process holds at once (None: no limit)
    session_cookie: str = "sessionid"
    api_prefix: str = "/api/"
    open_paths: frozenset[str] = frozenset({"/api/v1/docs/"})  # sends a browser to the login page


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    code: str
    field: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def body(self) -> bytes:
        data: dict[str, str] = {"error": self.message, "code": self.code}
        if self.field:
            data["field"] = self.field
        return json.dumps(data).encode()


def unauthorized(message: str, code: str) -> Refusal:
    return Refusal(401, message, code, headers=((b"www-authenticate", b"Token"),))


def throttled(wait: float | None) -> Refusal:
    """429 as DRF's throttles answer it (the API's error shape, `Retry-After` in whole seconds)."""
    seconds = max(1, math.ceil(wait or 0))
    return Refusal(
        429,
        f"Request was throttled. Expected available in {seconds} second{'s' if seconds != 1 else ''}.",
        "throttled",
        headers=((b"retry-after", str(seconds).encode()),),
    )


TOO_LARGE = Refusal(413, "request body too large", "body_too_large")
TIMED_OUT = Refusal(408, "the request body did not arrive in time", "body_timeout")
BAD_LENGTH = Refusal(400, "Content-Length is not a number", "invalid", "Content-Length")
BUSY = Refusal(503, "too many credentials to check at once; retry", "busy", headers=((b"retry-after", b"1"),))
CANNOT_CHECK = Refusal(
    503, "credentials cannot be checked now; retry", "unavailable", headers=((b"retry-after", b"1"),)
)
BUFFERS_FULL = Refusal(
    503, "too many request bodies in flight; retry", "busy", headers=((b"retry-after", b"1"),)
)


class Headers:
    """The headers the intake reads, repeated ones joined with a comma as Django joins them."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._values: dict[bytes, bytes] = {}
        for raw_name, value in raw:
            name = raw_name.lower()
            self._values[name] = self._values[name] + b"," + value if name in self._values else value

    def get(self, name: bytes) -> bytes | None:
        return self._values.get(name)


def announced_length(headers: Headers) -> int | None:
    """The `Content-Length`, None when absent; ValueError when it is not a number."""
    raw = headers.get(b"content-length")
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit():
        raise ValueError(raw)
    return int(text)


def body_announced(headers: Headers, length: int | None) -> bool:
    return bool(length) or headers.get(b"transfer-encoding") is not None


class BufferBudget:
    """The bytes of request bodies this process holds (read, or handed to Django and not answered)."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.used = limit, 0

    def take(self, size: int) -> bool:
        if self.limit is not None and self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


class BodyBytes:
    """One request's share of the budget, given back whole when the request is done."""

    def __init__(self, budget: BufferBudget) -> None:
        self.budget, self.held = budget, 0

    def take(self, size: int) -> bool:
        if not self.budget.take(size):
            return False
        self.held += size
        return True

    def give_back(self) -> None:
        self.budget.give_back(self.held)
        self.held = 0

    def give_back_on_start(self, send: Send) -> Send:
        """`send` that gives the bytes back when the response starts: the view is done with the body
        then (a stream that follows holds no more of it), and a client that got its answer finds the
        room free for its next upload."""

        async def sending(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.give_back()
            await send(message)

        return sending


class Intake:
    """The ASGI middleware of this module's docstring, in front of awaken_project/asgi.py's BoundedViews."""

    def __init__(self, app: App, policy: IntakePolicy, probes: Probes, *, lookup_threads: int = 2) -> None:
        self.app, self.policy, self.probes = app, policy, probes
        self._lookups = ThreadPoolExecutor(lookup_threads, thread_name_prefix="awaken-auth")
        self._pending = 0
        self.buffers = BufferBudget(policy.max_buffered_bytes)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope.get("headers", ()))
        try:
            length = announced_length(headers)
        except ValueError:
            await respond(send, BAD_LENGTH, close=True)
            return
        unread = body_announced(headers, length)
        if scope["path"] in PROBE_PATHS:
            await self.probes.answer(scope["path"], send, close=unread)
            return
        limit = self.policy.max_body_bytes
        if limit is not None and length is not None and length > limit:
            await respond(send, TOO_LARGE, close=True)
            return
        if self._guarded(scope["path"]):
            refusal = await self.credentials(headers)
            if refusal is not None and refusal.status == 401:
                refusal = await self._counted(scope, headers, refusal)
            if refusal is not None:
                await respond(send, refusal, close=unread)
                return
        held = BodyBytes(self.buffers)
        try:
            body = await read_body(receive, limit, self.policy.body_timeout_s, held.take)
            if isinstance(body, Refusal):
                await respond(send, body, close=True)
                return
            if body is None:  # the client left
                return
            await self.app(scope, replay(body, receive), held.give_back_on_start(send))
        finally:
            held.give_back()

    def _guarded(self, path: str) -> bool:
        return path.startswith(self.policy.api_prefix) and path not in self.policy.open_paths

    async def credentials(self, headers: Headers) -> Refusal | None:
        """None when the request may go on: a valid token, or a session cookie (no token scheme)."""
        authorization = (headers.get(b"authorization") or b"").split()
        if not authorization or authorization[0].lower() != b"token":
            if self._has_session(headers):
                return None  # (another scheme, or none: DRF's session authentication decides)
            return unauthorized(NO_CREDENTIALS, "not_authenticated")
        if len(authorization) == 1:
            return unauthorized("Invalid token header. No credentials provided.", "authentication_failed")
        if len(authorization) > 2:
            return unauthorized(
                "Invalid token header. Token string should not contain spaces.", "authentication_failed"
            )
        try:
            key = authorization[1].decode()
        except UnicodeError:
            return unauthorized(
                "Invalid token header. Token string should not contain invalid characters.",
                "authentication_failed",
            )
        if tokens.get(key) is not None:
            return None
        return await self._lookup(key)

    async def _counted(self, scope: Message, headers: Headers, refusal: Refusal) -> Refusal:
        """The 401, counted against the client address's anonymous budget on a lookup thread (the
        counter is in Redis); 429 once the budget is spent. A counter that cannot be reached leaves
        the 401 as it was."""
        if self._pending >= MAX_PENDING_LOOKUPS:  # a flood: its 401s are cheap, the executor stays bounded
            return refusal
        client = scope.get("client") or ("", 0)
        meta = {"REMOTE_ADDR": client[0]}
        forwarded = headers.get(b"x-forwarded-for")
        if forwarded is not None:
            meta["HTTP_X_FORWARDED_FOR"] = forwarded.decode("latin-1")
        self._pending += 1
        try:
            wait = await asyncio.get_running_loop().run_in_executor(self._lookups, _spend_anonymous, meta)
        except Exception:
            log.warning("could not count a refused request", exc_info=True)
            return refusal
        finally:
            self._pending -= 1
        return refusal if wait is None else throttled(wait)

    def _has_session(self, headers: Headers) -> bool:
        cookie = headers.get(b"cookie")
        if cookie is None:
            return False
        return bool(parse_cookie(cookie.decode("latin-1")).get(self.policy.session_cookie))

    async def _lookup(self, key: str) -> Refusal | None:
        if self._pending >= MAX_PENDING_LOOKUPS:
            return BUSY
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            message = await loop.run_in_executor(self._lookups, _check_key, key)
        except Exception:  # PostgreSQL unreachable: not the client's fault, and not a 500
            log.warning("could not check a token", exc_info=True)
            return CANNOT_CHECK
        finally:
            self._pending -= 1
        return None if message is None else unauthorized(message, "authentication_failed")


def _spend_anonymous(meta: dict[str, str]) -> float | None:
    """On a lookup thread: one request without valid credentials from the address in `meta`, counted
    as Django's anonymous throttle counts it (its address rule, AWAKEN_API_NUM_PROXIES included); the
    seconds until the window ends when the budget is spent, else None."""
    throttle = SharedAnonRateThrottle()
    forwarded = meta.get("HTTP_X_FORWARDED_FOR")
    request = SimpleNamespace(
        user=None, META=meta, headers={} if forwarded is None else {"x-forwarded-for": forwarded}
    )
    if throttle.allow_request(request, None):  # type: ignore[arg-type]
        return None
    return throttle.wait()


def _check_key(key: str) -> str | None:
    """On a lookup thread: None if `key` authenticates, else DRF's message. The thread's connection
    goes back (to the pool) after each lookup."""
    try:
        tokens.authenticate(key)
    except AuthenticationFailed as exc:
        return str(exc.detail)
    finally:
        db.connections.close_all()
    return None


async def read_body(
    receive: Receive, limit: int | None, timeout_s: float, take: Callable[[int], bool] = lambda _: True
) -> bytes | Refusal | None:
    """The whole body, or the refusal (408, 413, 503 when `take` refuses to hold another chunk); None
    when the client disconnected."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if limit is not None and size > limit:
                    return TOO_LARGE
                if not take(len(chunk)):
                    return BUFFERS_FULL
                if chunk:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        return TIMED_OUT


def replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body read, then the server's own (which reports the disconnect)."""
    delivered = False

    async def replayed() -> Mapping[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def respond(send: Send, refusal: Refusal, *, close: bool) -> None:
    payload = refusal.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *refusal.headers,
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
