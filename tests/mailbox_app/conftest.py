"""Engine fixtures without and with an in-process worker (`engine`, `worker`) and with worker subprocesses
(`mp_settings`, `farm`); the shared ones (`engine_settings`, `clean_redis`, `mailbox_worker`) live in
tests/conftest.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings

from tests.support.agents import BACKGROUND_ERRORS, EXTRA_AGENTS, RECORDER, STUBBORN_SAW_CANCEL, TEST_AGENTS
from tests.support.engine import fast_polling_worker
from tests.support.servers import database_url_of_test_db
from tests.support.worker_farm import MAILBOX_ENV, MP_CONFIG, SIGNAL_ENV, WorkerFarm


@pytest.fixture
def engine(transactional_db: None, engine_settings: Any, clean_redis: redis.Redis) -> Iterator[Any]:
    """Committed database + engine settings + clean Redis, *without* a worker; Redis is flushed after too
    (doorbells sent while no worker runs must not leak into later tests)."""
    engine_settings.AWAKEN_AGENTS = EXTRA_AGENTS
    STUBBORN_SAW_CANCEL.clear()
    BACKGROUND_ERRORS.clear()
    yield engine_settings
    RECORDER.release.set()
    clean_redis.flushdb()


@pytest.fixture
def worker(engine: Any) -> Iterator[Any]:
    with fast_polling_worker() as running:
        yield running


@pytest.fixture
def mp_settings(engine_settings: Any) -> Any:
    """The in-process settings equal the workers' (the test process submits, claims inline, sweeps)."""
    engine_settings.AWAKEN_MAILBOX = MP_CONFIG
    engine_settings.AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS = int(
        SIGNAL_ENV["AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS"]
    )
    engine_settings.AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS = int(
        SIGNAL_ENV["AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS"]
    )
    return engine_settings


@pytest.fixture
def farm(
    transactional_db: None, mp_settings: Any, clean_redis: redis.Redis, tmp_path: Path
) -> Iterator[WorkerFarm]:
    """Starts `celery worker` subprocesses on demand; stops every one of them (and its children)."""
    env = {k: v for k, v in os.environ.items() if k != "AWAKEN_FAULT_POINT"}
    env |= MAILBOX_ENV | SIGNAL_ENV
    env |= {
        "DATABASE_URL": database_url_of_test_db(),
        "REDIS_URL": django_settings.REDIS_URL,
        "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
        "AWAKEN_AGENTS": json.dumps(TEST_AGENTS),
        "AWAKEN_LIVE_SUSPEND_HOLD_MS": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    workers = WorkerFarm(tmp_path, env)
    try:
        yield workers
    finally:
        workers.stop_all()
        workers.print_logs()  # shown by pytest only when the test failed
