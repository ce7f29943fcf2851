"""`manage.py mailbox_pause` / `mailbox_resume` (docs/inbox.md): each scope, the summary line, a second
pause keeping the first, `--interrupt` stopping the scope's claimed runs, a resume that rings the held
threads, and the errors (no scope, two scopes, an empty id, a scope not paused)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from mailbox_app import store
from mailbox_app.contract.inbox import PauseScope
from mailbox_app.services import pauses
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db
LEASE = 30_000


def _run(*args: str) -> dict[str, object]:
    out = StringIO()
    call_command(*args, stdout=out)
    label, _, data = out.getvalue().strip().splitlines()[-1].partition(": ")
    return {"label": label, **json.loads(data)}


def test_pause_and_resume_a_thread_with_its_summary_lines() -> None:
    store.enqueue(make_dispatch("d1", "t-1", available_at=0, created_at=0))
    paused = _run("mailbox_pause", "--thread", "t-1", "--reason", "investigating", "--by", "operator:ops")
    assert paused == {
        "label": "pause",
        "scope": "thread",
        "key": "t-1",
        "paused_by": "operator:ops",
        "since": paused["since"],
        "reason": "investigating",
        "already_paused": False,
        "stopped_runs": [],
    }
    assert store.claim("t-1", "w", LEASE, 10) == []
    assert _run("mailbox_pause", "--thread", "t-1")["already_paused"] is True
    resumed = _run("mailbox_resume", "--thread", "t-1")
    assert (resumed["label"], resumed["rung_threads"], resumed["paused_by"]) == ("resume", 1, "operator:ops")
    assert [d.dispatch_id for d in store.claim("t-1", "w", LEASE, 10)] == ["d1"]


def test_pause_an_agent_and_everything_and_interrupt_their_claimed_runs() -> None:
    store.enqueue(make_dispatch("d1", "t-1", available_at=0, created_at=0).replace(agent_key="slow"))
    (claimed,) = store.claim("t-1", "w", LEASE, 10)
    paused = _run("mailbox_pause", "--agent", "slow", "--interrupt")
    assert (paused["scope"], paused["key"], paused["stopped_runs"]) == ("agent", "slow", [claimed.run_id])
    everything = _run("mailbox_pause", "--all")
    assert (everything["scope"], everything["key"]) == ("all", "")
    assert str(everything["paused_by"]).startswith("operator:")
    assert {p.label for p in pauses.list_pauses()} == {"agent slow", "everything"}
    _run("mailbox_resume", "--all")
    _run("mailbox_resume", "--agent", "slow")
    assert pauses.list_pauses() == []


@pytest.mark.parametrize(
    "args",
    [
        ("mailbox_pause",),
        ("mailbox_pause", "--thread", "t", "--all"),
        ("mailbox_pause", "--thread", "  "),
        ("mailbox_resume", "--agent", "never-paused"),
    ],
)
def test_a_wrong_invocation_is_an_error_and_changes_nothing(args: tuple[str, ...]) -> None:
    with pytest.raises(CommandError):
        call_command(*args, stdout=StringIO(), stderr=StringIO())
    assert pauses.list_pauses() == []


def test_a_users_pause_is_resumed_by_an_operator() -> None:
    pauses.pause(PauseScope.THREAD, "t-u", paused_by="user:alice", by_operator=False)
    assert _run("mailbox_resume", "--thread", "t-u")["paused_by"] == "user:alice"
