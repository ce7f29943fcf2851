"""Webhook fixtures: loopback receivers (hence AWAKEN_WEBHOOK_ALLOW_PRIVATE on), fast retry settings, an
in-process Celery worker that consumes the webhook queue beside the dispatch queue (the project routes
deliveries to a queue of their own), and API users who have a signing secret."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from awaken_project.celery import app
from mailbox_app.webhooks import outbox
from tests.mailbox_app.webhooks.receivers import PROJECT_SECRET, Receiver, TrickleReceiver
from tests.support.agents import RECORDER


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def trickle() -> Iterator[TrickleReceiver]:
    server = TrickleReceiver(interval_s=1.0)
    yield server
    server.close()


@pytest.fixture
def hook_settings(engine_settings: Any) -> Any:
    engine_settings.AWAKEN_WEBHOOK_ALLOW_PRIVATE = True
    engine_settings.AWAKEN_WEBHOOK_SECRET = PROJECT_SECRET
    engine_settings.AWAKEN_WEBHOOK_URL = ""
    engine_settings.AWAKEN_WEBHOOK_RETRY_DELAY_MS = 50
    engine_settings.AWAKEN_WEBHOOK_MAX_RETRY_DELAY_MS = 200
    engine_settings.AWAKEN_WEBHOOK_MAX_ATTEMPTS = 5
    engine_settings.AWAKEN_WEBHOOK_TIMEOUT_MS = 2_000
    return engine_settings


@pytest.fixture
def hook_worker(transactional_db: None, hook_settings: Any, clean_redis: redis.Redis) -> Iterator[Any]:
    """A real Celery worker (thread pool) in this process consuming the dispatch queue and the webhook
    queue. The queue selection lives on the shared app: the webhook queue is deselected afterwards so
    later tests' workers consume the dispatch queue only, as the Procfile's `worker` does."""
    queues = [app.conf.task_default_queue, outbox.QUEUE]
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=15,
            queues=queues,
        ) as worker:
            yield worker
    finally:
        app.amqp.queues.deselect([outbox.QUEUE])
        RECORDER.release.set()
