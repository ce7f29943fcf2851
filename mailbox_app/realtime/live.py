"""Live control over Redis: commands (cancel, messages, decision) to the worker executing a run.

Addressed to the exact `(thread, run, dispatch)` target so a stale subscriber never accepts a command
meant for a newer run. `Delivered` only after the subscriber acknowledged on a reply key within the
timeout; otherwise `NoSubscriber`, and the caller falls back to the durable path. At-least-once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.mailbox import LiveRunTarget, LocalRun
from mailbox_app.realtime.redis_client import get_redis

log = logging.getLogger(__name__)
ACK_KEY_TTL_S = 30


LocalRunFinder = Callable[[str], LocalRun | None]


def _no_local_runs(identifier: str) -> LocalRun | None:
    return None


_local_run_finder: LocalRunFinder = _no_local_runs


def use_local_runs(finder: LocalRunFinder) -> None:
    """Point the service's local lookup at the worker's registry (`MailboxAppConfig.ready` does): the
    service sits below the worker and must not import it, yet a command for a run in this very process
    is delivered in memory rather than over Redis."""
    global _local_run_finder
    _local_run_finder = finder


def find_local_run(identifier: str) -> LocalRun | None:
    """The run this process executes under that dispatch, run or thread id; None when absent or
    ambiguous."""
    return _local_run_finder(identifier)


class LiveDeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    NO_SUBSCRIBER = "no_subscriber"


def _ack_timeout_s() -> float:
    return float(awaken_settings.LIVE_ACK_TIMEOUT_MS) / 1000


def deliver_live_to(
    target: LiveRunTarget, command: dict[str, Any], *, timeout_s: float | None = None
) -> LiveDeliveryOutcome:
    """Publish `command` ({"kind": "cancel"|"messages"|"decision", ...}) and wait for the receipt."""
    client = get_redis()
    command_id = uuid7()
    receivers = client.publish(target.channel, json.dumps({"id": command_id, "command": command}))
    if not receivers:
        return LiveDeliveryOutcome.NO_SUBSCRIBER
    wait = _ack_timeout_s() if timeout_s is None else timeout_s
    reply = client.blpop([_ack_key(command_id)], timeout=max(wait, 0.01))
    return LiveDeliveryOutcome.DELIVERED if reply else LiveDeliveryOutcome.NO_SUBSCRIBER


def _ack_key(command_id: str) -> str:
    return f"mailbox:live:ack:{command_id}"


class LiveSubscription:
    """Listens on a target's channel in a daemon thread; `handler(command) -> accepted` decides the ack."""

    def __init__(self, target: LiveRunTarget, handler: Callable[[dict[str, Any]], bool]) -> None:
        self.target = target
        self._handler = handler
        self._pubsub = get_redis().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(target.channel)
        self._await_subscribed()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"live-{target.run_id}", daemon=True)
        self._thread.start()

    def _await_subscribed(self) -> None:
        """Return once Redis counts this subscriber, so a publish right after open is never missed."""
        client = get_redis()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            self._pubsub.get_message(timeout=0.01)
            counts = dict(client.pubsub_numsub(self.target.channel))
            if any(int(n) > 0 for n in counts.values()):
                return
        log.warning("live subscription on %s not confirmed", self.target.channel)

    def _loop(self) -> None:
        try:
            self._listen()
        finally:
            self._shutdown()

    def _listen(self) -> None:
        client = get_redis()
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.05)
            except Exception:
                log.exception("live subscription error on %s", self.target.channel)
                self._stop.wait(0.1)
                continue
            if not message or message.get("type") != "message" or self._stop.is_set():
                continue
            try:
                envelope = json.loads(message["data"])
                accepted = bool(self._handler(envelope["command"]))
            except Exception:
                log.exception("bad live command on %s", self.target.channel)
                continue
            if accepted:
                key = _ack_key(envelope["id"])
                pipe = client.pipeline(transaction=False)
                pipe.rpush(key, "1")
                pipe.expire(key, ACK_KEY_TTL_S)
                pipe.execute()

    def close(self) -> None:
        """Stop accepting commands now; the listener unsubscribes and closes within one poll (50 ms).

        Not joined: waiting for the poll to end cost ~18 ms per dispatch (bench/breakdown.py)."""
        self._stop.set()

    def _shutdown(self) -> None:
        try:
            self._pubsub.unsubscribe()
            self._pubsub.close()
        except Exception:  # noqa: BLE001
            pass
