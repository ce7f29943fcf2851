"""The per-thread execution lock in Redis: redis-py's `Lock`, valued with the dispatch's claim token.

It saves work (two processes never both start a thread); PostgreSQL's fenced writes decide correctness.
`thread_local=False` so the lease-renewal thread can extend it; `replace_ttl=True` so renewals do not
grow the TTL without bound (docs/pitfalls.md §2).
"""

from __future__ import annotations

from redis.exceptions import LockError
from redis.lock import Lock

from mailbox_app.realtime.redis_client import get_redis


def lock_key(thread_id: str) -> str:
    return _name(thread_id)


def _name(thread_id: str) -> str:
    return f"mailbox:lock:{thread_id}"


class ThreadLock:
    def __init__(self, thread_id: str, claim_token: str, ttl_ms: int) -> None:
        self.thread_id = thread_id
        self.token = claim_token
        self._lock = Lock(
            get_redis(), _name(thread_id), timeout=ttl_ms / 1000, blocking=False, thread_local=False
        )
        self._released = True  # nothing to release until acquired

    def acquire(self) -> bool:
        acquired = bool(self._lock.acquire(blocking=False, token=self.token))
        self._released = not acquired
        return acquired

    def extend(self, ttl_ms: int) -> bool:
        """False when the lock is no longer this token's; Redis errors propagate to the caller."""
        try:
            return bool(self._lock.extend(ttl_ms / 1000, replace_ttl=True))
        except LockError:
            return False

    def release(self) -> None:
        """Compare-and-delete; a second call on this instance is a no-op (no round trip)."""
        if self._released:
            return
        self._released = True
        try:
            self._lock.release()
        except LockError:
            pass  # expired or taken over: compare-and-delete found another token

    def mark_released(self) -> None:
        """The lock was given back by another call (events.append_finish's `release`)."""
        self._released = True

    @staticmethod
    def release_stale(thread_id: str, token: str) -> bool:
        """Compare-and-delete: drop the lock only while `token` (a revoked claim's) still holds it."""
        try:
            Lock(get_redis(), _name(thread_id), thread_local=False).do_release(token)
        except LockError:
            return False
        return True

    @staticmethod
    def holder(thread_id: str) -> tuple[str | None, int]:
        """(token, remaining ms) of the current holder, for diagnostics and back-off."""
        client = get_redis()
        value = client.get(_name(thread_id))
        ttl = int(client.pttl(_name(thread_id)))
        token = value.decode() if isinstance(value, bytes) else None
        return token, max(ttl, 0)


def extend_all(locks: list[tuple[ThreadLock, int]]) -> list[bool]:
    """Extend each (lock, ttl ms) to that TTL (replacing the remaining one), in one pipeline: the lease
    renewer's one round trip for every attempt of its process (mailbox_app/worker/lease.py). False for a
    lock that is no longer its token's; a Redis error propagates."""
    client = get_redis()
    script = client.register_script(Lock.LUA_EXTEND_SCRIPT)
    pipe = client.pipeline(transaction=False)
    for lock, ttl_ms in locks:
        script(keys=[_name(lock.thread_id)], args=[lock.token, ttl_ms, "1"], client=pipe)
    return [bool(answer) for answer in pipe.execute()]
