"""The list routes read a page in a fixed number of queries, however many items it holds (no N+1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from mailbox_app.contract.lifecycle import RunStatus
from runs_app import store as run_store
from tests.support.api import post_json
from tests.support.runs import enqueue_prepared, seed_run

THREAD = "t-lists"


def _queries(call: Callable[[], Any]) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = call()
    assert response.status_code == 200, response.content
    return len(captured.captured_queries)


def _add(alice: APIClient, count: int, start: int) -> None:
    """`count` more of everything a list shows: dispatches (with their runs and messages) on THREAD, and
    threads of alice's each with a run that is open and active."""
    owner = alice.get("/api/v1/threads").wsgi_request.user.pk
    run_store.ensure_thread(thread_id=THREAD, owner_id=owner)
    for i in range(start, start + count):
        enqueue_prepared(THREAD, f"hello {i}")
        thread_id = f"t-list-{i}"
        run_store.ensure_thread(thread_id=thread_id, owner_id=owner)
        seed_run(f"r-list-{i}", thread_id, RunStatus.RUNNING, updated_at=10 + i)


LISTS: dict[str, Callable[[APIClient], Any]] = {
    "GET runs": lambda c: c.get("/api/v1/runs?limit=200"),
    "GET threads/{id}/runs": lambda c: c.get(f"/api/v1/threads/{THREAD}/runs?limit=200"),
    "GET threads": lambda c: c.get("/api/v1/threads?limit=200"),
    "POST threads/search": lambda c: post_json(c, "/api/v1/threads/search", {"limit": 200}),
    "GET threads/{id}/mailbox": lambda c: c.get(f"/api/v1/threads/{THREAD}/mailbox?limit=200"),
    "GET threads/{id}/messages": lambda c: c.get(f"/api/v1/threads/{THREAD}/messages?limit=200"),
}


@pytest.mark.parametrize("route", list(LISTS))
def test_a_list_reads_in_a_fixed_number_of_queries(alice: APIClient, route: str) -> None:
    # given a page of two of everything, then one of ten
    list_page = LISTS[route]
    _add(alice, 2, 0)
    small = list_page(alice)
    few = _queries(lambda: list_page(alice))
    _add(alice, 8, 2)
    large = list_page(alice)
    many = _queries(lambda: list_page(alice))
    # then the page grew and the queries did not
    assert len(large.json()["items"]) > len(small.json()["items"]) >= 2
    assert many == few, f"{route}: {few} queries for {len(small.json()['items'])} items, {many} for more"
