"""One Redis connection pool per process (re-created after fork) for locks, live commands and events."""

from __future__ import annotations

import os
import threading

import redis

from mailbox_app.conf import awaken_settings

_lock = threading.Lock()
_client: redis.Redis | None = None
_pid = 0


def get_redis() -> redis.Redis:
    global _client, _pid
    with _lock:
        if _client is None or _pid != os.getpid():
            _client = redis.Redis.from_url(awaken_settings.REDIS_URL, health_check_interval=30)
            _pid = os.getpid()
        return _client
