"""Live control over Redis: commands (cancel, messages, decision) to the worker executing a run (the
reference's `try_deliver_live_messages` and its live receivers).

Addressed to the exact `(thread, run, dispatch)` target so a stale receiver never accepts a command
meant for a newer run. `Delivered` only after the receiver acknowledged on a reply key within the
timeout; otherwise `NoSubscriber`, and the caller falls back to the durable path. At-least-once. Each
worker process has one listener (`LISTENER`), subscribed to every run's channel; a run's subscription
is an entry in its routing table.
"""

from __future__ import annotations

import json
import logging
import os
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
PATTERN = "mailbox:live:*"  # every LiveRunTarget.channel (the ack keys are lists, not channels)
SUBSCRIBE_TIMEOUT_S = 2.0
POLL_S = 1.0
RECONNECT_S = 0.5
Handler = Callable[[dict[str, Any]], bool]


LocalRunFinder = Callable[[LiveRunTarget], LocalRun | None]


def _no_local_runs(target: LiveRunTarget) -> LocalRun | None:
    return None


_local_run_finder: LocalRunFinder = _no_local_runs


def use_local_runs(finder: LocalRunFinder) -> None:
    """Point the service's local lookup at the worker's registry (`MailboxAppConfig.ready` does): the
    service sits below the worker and must not import it, yet a command for a run in this very process
    is delivered in memory rather than over Redis."""
    global _local_run_finder
    _local_run_finder = finder


def find_local_run(target: LiveRunTarget) -> LocalRun | None:
    """The run this process executes as exactly this target (its thread, run and dispatch); None when
    absent. Never by a bare id, which could name another thread's run or another kind of thing."""
    return _local_run_finder(target)


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


class Listener:
    """The process's one live-command listener (the reference keeps a receiver per execution): a pubsub
    connection subscribed to every run's channel (`PATTERN`) in a daemon thread, which hands each command
    to the handler routed for its channel, in memory, and acknowledges what the handler accepted. A run
    that starts or ends costs no Redis call: routing is a dict entry. Every worker process receives every
    command and only the one running the target acts on it; commands are rare (cancel, steering,
    decisions). While the connection is down, commands go unacknowledged and their senders take the
    durable path; the listener reconnects and subscribes again."""

    def __init__(self) -> None:
        self._routes: dict[str, Handler] = {}
        self._guard = threading.Lock()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def route(self, channel: str, handler: Handler) -> None:
        """Hand the commands published on `channel` to `handler` (replacing any handler it had)."""
        with self._guard:
            self._routes[channel] = handler
            self._ensure_running()
        if not self._subscribed.wait(SUBSCRIBE_TIMEOUT_S):
            log.warning("the live-command listener is not subscribed yet; %s waits for it", channel)

    def unroute(self, channel: str, handler: Handler) -> None:
        with self._guard:
            if self._routes.get(channel) is handler:
                del self._routes[channel]

    def _ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._subscribed.clear()
        self._thread = threading.Thread(target=self._loop, name="mailbox-live-listener", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        warned = False  # once an outage: a stopped Redis must not fill the log on every retry
        while True:
            try:
                self._listen()
            except Exception as exc:  # noqa: BLE001 - any failure: subscribe again
                if self._subscribed.is_set() or not warned:  # a connection that worked, or the first try
                    log.warning("live-command listener lost its connection (%s); subscribing again", exc)
                warned = True
            self._subscribed.clear()
            time.sleep(RECONNECT_S)

    def _listen(self) -> None:
        pubsub = get_redis().pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
        try:
            pubsub.psubscribe(PATTERN)
            while True:
                message = pubsub.get_message(timeout=POLL_S)
                if message is None:
                    continue
                if message.get("type") == "psubscribe":
                    self._subscribed.set()
                elif message.get("type") == "pmessage":
                    self._deliver(message)
        finally:
            pubsub.close()

    def _deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        with self._guard:
            handler = self._routes.get(channel)
        if handler is None:  # a run of another process
            return
        try:
            envelope = json.loads(message["data"])
            accepted = bool(handler(envelope["command"]))
        except Exception:
            log.exception("bad live command on %s", channel)
            return
        if accepted:
            key = _ack_key(envelope["id"])
            pipe = get_redis().pipeline(transaction=False)
            pipe.rpush(key, "1")
            pipe.expire(key, ACK_KEY_TTL_S)
            pipe.execute()


LISTENER = Listener()


class LiveSubscription:
    """A target's commands to `handler(command) -> accepted` (which decides the acknowledgement), through
    the process's listener: opening and closing it are dict operations, no Redis call."""

    def __init__(self, target: LiveRunTarget, handler: Handler) -> None:
        self.target = target
        self._handler = handler
        LISTENER.route(target.channel, handler)

    def close(self) -> None:
        """Stop accepting commands now (a command for this target is then unacknowledged)."""
        LISTENER.unroute(self.target.channel, self._handler)
