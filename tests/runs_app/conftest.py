"""API fixtures: two users, each with an authenticated client (their threads are 404 to each other)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.support.api import user_client


@pytest.fixture
def alice(db: None) -> APIClient:
    return user_client("alice")


@pytest.fixture
def bob(db: None) -> APIClient:
    return user_client("bob")
