"""Engine fixtures without and with a worker (`engine`, `worker`); the shared ones (`engine_settings`,
`clean_redis`, `mailbox_worker`) live in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.agents import BACKGROUND_ERRORS, EXTRA_AGENTS, RECORDER, STUBBORN_SAW_CANCEL
from tests.support.engine import fast_polling_worker


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
