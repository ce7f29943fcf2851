"""Shared fixtures: the real database (pytest-django) and a clean Redis database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from mailbox_app.records import DispatchRecord


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def make_dispatch(
    dispatch_id: str,
    thread_id: str,
    run_id: str | None = None,
    *,
    priority: int = 128,
    available_at: int = 1000,
    created_at: int = 1000,
    max_attempts: int = 5,
    dedupe_key: str | None = None,
) -> DispatchRecord:
    """A queued dispatch like the conformance suite's `make_dispatch`."""
    return DispatchRecord(
        dispatch_id=dispatch_id,
        thread_id=thread_id,
        run_id=run_id or f"run-{dispatch_id}",
        priority=priority,
        available_at=available_at,
        max_attempts=max_attempts,
        dedupe_key=dedupe_key,
        created_at=created_at,
        updated_at=created_at,
    )
