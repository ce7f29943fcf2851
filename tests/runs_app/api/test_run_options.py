"""`priority` on every submit route: passed to the dispatch, validated with the field named."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from mailbox_app import store
from mailbox_app.models import Dispatch
from tests.support.api import post_json

MSG = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("route", ["mailbox", "runs"])
def test_the_priority_reaches_the_dispatch(alice: APIClient, route: str) -> None:
    resp = post_json(alice, f"/api/v1/threads/t-prio-{route}/{route}", {"messages": MSG, "priority": 3})
    assert resp.status_code in (200, 201), resp.content
    dispatch = store.load_dispatch(resp.json()["dispatch_id"])
    assert dispatch is not None and dispatch.priority == 3


def test_the_default_priority_is_128(alice: APIClient) -> None:
    resp = post_json(alice, "/api/v1/threads/t-prio-default/mailbox", {"messages": MSG})
    assert resp.status_code == 201, resp.content
    assert store.load_dispatch(resp.json()["dispatch_id"]).priority == 128  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [-1, 256, "high", 1.5, True, None])
def test_a_bad_priority_is_a_400_naming_the_field_and_writes_nothing(alice: APIClient, bad: Any) -> None:
    resp = post_json(alice, "/api/v1/threads/t-prio-bad/mailbox", {"messages": MSG, "priority": bad})
    assert resp.status_code == 400, resp.content
    assert "priority" in resp.content.decode()
    assert not Dispatch.objects.filter(thread_id="t-prio-bad").exists()
