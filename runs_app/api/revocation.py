"""Telling every process that a token stopped being valid: a Redis pub/sub channel, and an
acknowledgement from each subscriber so the revoker knows when every process has heard.

Why pub/sub and not a version key: a hit in the token cache (runs_app/api/auth.py) costs no round trip
at all. A generation counter in Redis would be one `GET` per request, which is what the cache is there to
save. The price is that a process must know when it may have missed a message, so:

- each process holds one subscription (a daemon thread, started on first use in each process, again
  after a fork). While it is not subscribed, or has not heard from Redis for `STALE_AFTER_S` (it pings
  every `PING_EVERY_S`), the process is *untrusted*: its cache is neither read nor filled, every request
  asks PostgreSQL. On every (re)subscription the cache is emptied, so nothing learnt before a gap survives;
- the revoker publishes after its transaction committed, and then waits until as many subscribers as
  Redis delivered the message to have acknowledged it (each pushes to a per-message list after it
  evicted). When `publish_and_wait` returns, every subscribed process has dropped the token: "at once"
  is a fact, not a race between the revoker's next request and another process's subscriber thread.

A subscriber whose connection is half-open (Redis still counts it, it hears nothing) is the one case
where a revoked token can still be accepted, for at most `STALE_AFTER_S`; the revoker then times out
waiting and logs it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.client import PubSub

from mailbox_app.conf import awaken_settings

log = logging.getLogger(__name__)
CHANNEL = "awaken:auth:revoked"
ACK_PREFIX = "awaken:auth:ack:"
ACK_TTL_S = 60
PING_EVERY_S = 1.0
STALE_AFTER_S = 3.0
POLL_S = 0.25
RECONNECT_PAUSE_S = 0.5
WAIT_FOR_ACKS_S = 2.0


@dataclass(frozen=True, slots=True)
class Revocation:
    """Token keys that no longer authenticate, and users whose every token must be read again."""

    keys: tuple[str, ...] = ()
    user_ids: tuple[int, ...] = ()
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def encode(self) -> str:
        return json.dumps({"id": self.message_id, "keys": self.keys, "users": self.user_ids})

    @classmethod
    def decode(cls, raw: bytes | str) -> Revocation:
        data: Any = json.loads(raw)
        return cls(
            keys=tuple(str(k) for k in data.get("keys", ())),
            user_ids=tuple(int(u) for u in data.get("users", ())),
            message_id=str(data["id"]),
        )


def _client(timeout_s: float) -> redis.Redis:
    return redis.Redis.from_url(
        awaken_settings.REDIS_URL, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )


def publish_and_wait(revocation: Revocation, *, wait_s: float = WAIT_FOR_ACKS_S) -> tuple[int, int]:
    """Publish `revocation`; wait until every process it reached has acknowledged (or `wait_s`).
    Returns (reached, acknowledged). A Redis error is logged, not raised: every subscriber has then lost
    Redis too, or will notice within STALE_AFTER_S, and stops trusting its cache."""
    ack_key = ACK_PREFIX + revocation.message_id
    client = _client(wait_s + 1.0)
    try:
        reached = int(client.publish(CHANNEL, revocation.encode()))
        acked = 0
        deadline = time.monotonic() + wait_s
        while acked < reached and (left := deadline - time.monotonic()) > 0:
            if client.blpop([ack_key], timeout=max(left, 0.01)) is None:
                break
            acked += 1
        client.delete(ack_key)
    except redis.RedisError:
        log.error("token revocation %s not published; other processes keep cached tokens", revocation.keys)
        return 0, 0
    finally:
        client.close()
    if acked < reached:
        log.warning("token revocation: %d of %d processes acknowledged within %.1fs", acked, reached, wait_s)
    return reached, acked


class RevocationListener:
    """This process's subscription to the revocation channel (one daemon thread per process).

    `on_revoked(revocation)` evicts; `on_reset()` empties the cache (after a gap in the subscription).
    Both run on the listener thread."""

    def __init__(self, on_revoked: Callable[[Revocation], None], on_reset: Callable[[], None]) -> None:
        self._on_revoked, self._on_reset = on_revoked, on_reset
        self._lock = threading.Lock()
        self._pid = 0
        self._subscribed = False
        self._last_heard = 0.0

    def trusted(self) -> bool:
        """Subscribed, and heard from Redis recently enough that no revocation can have been missed."""
        return (
            self._subscribed
            and self._pid == os.getpid()
            and time.monotonic() - self._last_heard < STALE_AFTER_S
        )

    def ensure_running(self) -> bool:
        """Start the listener thread of this process if it is not running; whether it is trusted yet."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():  # first use in this process (or after a fork)
                    self._subscribed = False
                    self._pid = os.getpid()
                    thread = threading.Thread(target=self._run, name="awaken-token-revocations", daemon=True)
                    thread.start()
        return self.trusted()

    def _run(self) -> None:
        pid = os.getpid()
        warned = False  # once an outage: a stopped Redis must not fill the log twice a second
        while self._pid == pid:
            try:
                self._listen(pid)
            except Exception:  # noqa: BLE001 - any failure: untrusted until subscribed again
                if self._subscribed or not warned:  # a subscription that worked, or the first try
                    log.warning("token revocation channel lost; the token cache is off until it is back")
                warned = True
            self._subscribed = False
            self._on_reset()
            time.sleep(RECONNECT_PAUSE_S)

    def _listen(self, pid: int) -> None:
        client = _client(PING_EVERY_S * 2)
        pubsub: PubSub = client.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(CHANNEL)
            next_ping = time.monotonic() + PING_EVERY_S
            while self._pid == pid:
                message = pubsub.get_message(timeout=POLL_S)
                now = time.monotonic()
                if message is not None:
                    self._last_heard = now
                    self._handle(message, client)
                if now >= next_ping:
                    pubsub.ping()
                    next_ping = now + PING_EVERY_S
                if now - self._last_heard >= STALE_AFTER_S:
                    raise redis.ConnectionError("no answer to the revocation channel's pings")
        finally:
            _close(pubsub, client)

    def _handle(self, message: dict[str, Any], client: redis.Redis) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            self._on_reset()  # whatever was cached before this subscription may have missed a message
            self._subscribed = True
        elif kind == "message":
            revocation = Revocation.decode(message["data"])
            self._on_revoked(revocation)
            ack_key = ACK_PREFIX + revocation.message_id
            with client.pipeline() as pipe:
                pipe.rpush(ack_key, os.getpid())
                pipe.expire(ack_key, ACK_TTL_S)
                pipe.execute()


def _close(pubsub: PubSub, client: redis.Redis) -> None:
    for closing in (pubsub.close, client.close):
        try:
            closing()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
            pass


def as_revocation(keys: Sequence[str] = (), user_ids: Sequence[int] = ()) -> Revocation:
    return Revocation(keys=tuple(keys), user_ids=tuple(user_ids))
