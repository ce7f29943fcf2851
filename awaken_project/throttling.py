"""The API's throttles, counted in Redis so that every web process (and host) shares the count.

DRF's own throttles keep a list of request times in Django's cache, read and written back per request:
with a per-process cache every gunicorn worker had its own budget, and even on a shared cache two
processes that read the same list each write it back with only their own request added, so concurrent
requests go uncounted. Here a request increments a counter for (scope, who, fixed window) with Redis's
atomic INCR (the `throttle` cache, settings.CACHES): at most N requests per window pass, however many
processes serve them. The window is fixed (a burst may straddle two windows: at most 2N in one period).

`SharedUserRateThrottle` counts an authenticated user's requests (AWAKEN_API_THROTTLE_RATE) and, like
DRF's, an anonymous request's by client address; `SharedAnonRateThrottle` counts only requests without
valid credentials (AWAKEN_API_ANON_THROTTLE_RATE), which the API's views check before they answer 401
(runs_app/api/edge.py). The client address is DRF's (`NUM_PROXIES`, AWAKEN_API_NUM_PROXIES).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from django.core.cache import BaseCache, caches
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

if TYPE_CHECKING:  # (rest_framework.views imports this module while it defines APIView)
    from rest_framework.request import Request
    from rest_framework.views import APIView

CACHE_ALIAS = "throttle"


_shared: BaseCache | None = None
_shared_lock = threading.Lock()


def throttle_cache() -> BaseCache:
    """The process's one instance of the `throttle` cache. Not `caches[...]`: that is one instance per
    thread and per async context, each RedisCache instance has its own connection pool, so under ASGI
    every request would open a new Redis connection (left open until garbage-collected). redis-py's
    pool is thread-safe."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = caches.create_connection(CACHE_ALIAS)
    return _shared


def count_in_window(cache: BaseCache, key: str, timeout: int) -> int:
    """Add one to `key` (given `timeout` seconds to live when this creates it) and return the new count,
    in one round trip (a script: Redis 6 has no EXPIRE NX); atomic on Redis, so concurrent callers in any
    process each see a different count."""
    client = cache._cache.get_client(key, write=True)  # type: ignore[attr-defined]  # django's RedisCache
    return int(client.eval(_COUNT, 1, cache.make_and_validate_key(key), timeout))


_COUNT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class SharedWindowThrottle(SimpleRateThrottle):
    """A fixed-window counter in the shared cache, with the rate read live from the API settings."""

    window_end = 0.0
    num_requests: int | None
    duration: int | None

    @property
    def cache(self) -> BaseCache:  # type: ignore[override]  # DRF's class attribute is the process's default cache
        return throttle_cache()

    def get_rate(self) -> str | None:
        # DRF's THROTTLE_RATES is the dict of when rest_framework was imported; this follows
        # override_settings too
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(str(self.scope))
        return None if rate is None else str(rate)

    def allow_request(self, request: Request, view: APIView) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        assert self.duration is not None and self.num_requests is not None
        self.now = self.timer()
        window = int(self.now // self.duration)
        self.window_end = (window + 1) * self.duration
        count = count_in_window(self.cache, f"{key}:{window}", timeout=self.duration + 1)
        return count <= self.num_requests

    def wait(self) -> float | None:
        return max(self.window_end - self.now, 0.0)


class SharedUserRateThrottle(SharedWindowThrottle, UserRateThrottle):
    """Per user (or per client address without credentials): AWAKEN_API_THROTTLE_RATE."""


class SharedAnonRateThrottle(SharedWindowThrottle, AnonRateThrottle):
    """Per client address, requests without valid credentials only: AWAKEN_API_ANON_THROTTLE_RATE."""
