"""Shared fixtures: the real database (pytest-django), a clean Redis, and a real in-process Celery worker
with test agents and fast leases for engine tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from awaken_project.celery import app
from tests.support.agents import RECORDER, TEST_AGENTS
from tests.support.dispatches import FAST


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A socket or file a test leaves open is reported (a ResourceWarning, an error here) by the test
    that leaked it, not by whichever later test the garbage collector happens to run in."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _project_celery_app_is_current() -> None:
    """The apps send through `celery.current_app`; in production the project's app is the only one. Here
    pytest-celery's plugin imports its own worker app (`celery_test_app`), which makes itself current in
    the main thread, so without this a doorbell sent from a test went to that app's amqp broker — unless
    an earlier test happened to start a worker (which makes the project's app current again)."""
    app.set_current()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def engine_settings(settings: Any) -> Any:
    settings.AWAKEN_MAILBOX = FAST
    settings.AWAKEN_AGENTS = TEST_AGENTS
    settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 5_000
    settings.AWAKEN_LIVE_SUSPEND_HOLD_MS = 0
    settings.AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS = 50
    settings.AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS = 500
    RECORDER.reset()
    yield settings
    RECORDER.release.set()


@pytest.fixture
def clean_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def mailbox_worker(transactional_db: None, engine_settings: Any, clean_redis: redis.Redis) -> Iterator[Any]:
    """A real Celery worker (thread pool) consuming the real Redis broker inside this process."""

    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING", shutdown_timeout=15
    ) as worker:
        yield worker
    RECORDER.release.set()
