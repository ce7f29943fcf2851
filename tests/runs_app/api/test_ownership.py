"""Ownership is decided under the thread's row lock, in the transaction that writes (issue 8 item 2)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.db import connection

from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import NotFound
from mailbox_app.models import Dispatch
from mailbox_app.services import mailbox
from runs_app import store as run_store
from runs_app.models import Message, Run, Thread
from tests.support.api import new_user, token_client

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_submit_into_another_users_thread_writes_nothing_even_past_the_views_check(
    clean_redis: Any,
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    mailbox.submit_background(
        RunRequest(thread_id="t-owned", messages=[ChatMessage.user("mine")]), owner_id=alice.id
    )
    counts = (Run.objects.count(), Message.objects.count(), Dispatch.objects.count())
    with pytest.raises(NotFound):
        mailbox.submit_background(
            RunRequest(thread_id="t-owned", messages=[ChatMessage.user("intruder")]), owner_id=bob.id
        )
    assert (Run.objects.count(), Message.objects.count(), Dispatch.objects.count()) == counts
    assert [m.text for m in run_store.load_messages(thread_id="t-owned") or []] == ["mine"]
    assert Thread.objects.get(id="t-owned").owner_id == alice.id


@pytest.mark.parametrize("round_", range(5))
def test_two_users_racing_to_create_one_thread_id_one_wins_and_the_loser_writes_nothing(
    clean_redis: Any, round_: int
) -> None:
    users = [new_user(f"alice-{round_}"), new_user(f"bob-{round_}")]
    clients = [token_client(u) for u in users]
    thread_id = f"t-race-{round_}"
    barrier = threading.Barrier(2)
    answers: dict[int, Any] = {}

    def post(k: int) -> None:
        try:
            barrier.wait(5)
            body = {"messages": [{"role": "user", "content": f"from {k}"}]}
            answers[k] = clients[k].post(
                f"/api/v1/threads/{thread_id}/mailbox", data=json.dumps(body), content_type="application/json"
            )
        finally:
            connection.close()

    workers = [threading.Thread(target=post, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    codes = sorted(a.status_code for a in answers.values())
    assert codes == [201, 404], [(a.status_code, a.content) for a in answers.values()]
    winner = next(k for k, a in answers.items() if a.status_code == 201)
    assert Thread.objects.get(id=thread_id).owner_id == users[winner].id
    assert [m.text for m in run_store.load_messages(thread_id=thread_id) or []] == [f"from {winner}"]
    assert Run.objects.filter(thread_id=thread_id).count() == 1
    assert Dispatch.objects.filter(thread_id=thread_id).count() == 1
