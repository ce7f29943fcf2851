"""`/healthz` and `/readyz` answered in the ASGI layer (awaken_project/intake.py), never queued behind the
view permits of awaken_project/asgi.py: a liveness probe that waits behind 16 slow views restarts a
healthy process, and a readiness probe that does pulls it out of rotation.

`/healthz` answers from the event loop. `/readyz` checks PostgreSQL and Redis on the loop with their own
connections and a short timeout each (never a pooled connection a view may be holding). Probes that
arrive together share one check, and a result is reused for `REUSE_S`: a flood of probes opens at most
one PostgreSQL connection at a time. The Django views of awaken_project/health.py stay for other
servers and the test client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psycopg
import redis.asyncio as aioredis

HEALTHZ, READYZ = "/healthz", "/readyz"
PATHS = frozenset({HEALTHZ, READYZ})
CHECK_TIMEOUT_S = 2.0
REUSE_S = 1.0
# psycopg.connect keyword arguments Django adds that are not libpq connection parameters
_NOT_LIBPQ = frozenset({"cursor_factory", "context", "prepare_threshold"})

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
Readiness = tuple[int, dict[str, Any]]


def libpq_params(connection_params: Mapping[str, Any]) -> dict[str, Any]:
    """Django's `get_connection_params()` as libpq parameters, with a connect timeout."""
    params = {k: v for k, v in connection_params.items() if k not in _NOT_LIBPQ}
    params["connect_timeout"] = max(int(CHECK_TIMEOUT_S), 2)  # (libpq's minimum is 2 s)
    return params


class Probes:
    def __init__(self, postgres: Mapping[str, Any], redis_url: str) -> None:
        self.postgres, self.redis_url = dict(postgres), redis_url
        self._inflight: asyncio.Future[Readiness] | None = None
        self._last: Readiness | None = None
        self._last_at = 0.0

    async def answer(self, path: str, send: Send, *, close: bool) -> None:
        status, body = (200, {"status": "ok"}) if path == HEALTHZ else await self.readiness()
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def readiness(self) -> Readiness:
        loop = asyncio.get_running_loop()
        if self._last is not None and loop.time() - self._last_at < REUSE_S:
            return self._last
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._check())
        return await asyncio.shield(self._inflight)

    async def _check(self) -> Readiness:
        try:
            problems = await asyncio.gather(self._postgres(), self._redis())
            down = [p for p in problems if p]
            result: Readiness = (200, {"status": "ready"})
            if down:
                result = (503, {"status": "unavailable", "down": down})
            self._last, self._last_at = result, asyncio.get_running_loop().time()
            return result
        finally:
            self._inflight = None

    async def _postgres(self) -> str | None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                conn = await psycopg.AsyncConnection.connect(**self.postgres)
                try:
                    await conn.execute("SELECT 1")
                finally:
                    await conn.close()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            return f"postgresql: {exc.__class__.__name__}"
        return None

    async def _redis(self) -> str | None:
        client = aioredis.Redis.from_url(
            self.redis_url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
        )
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await client.ping()
        except Exception as exc:  # noqa: BLE001
            return f"redis: {exc.__class__.__name__}"
        finally:
            await client.aclose()
        return None
