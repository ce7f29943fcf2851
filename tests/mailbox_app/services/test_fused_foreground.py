"""The foreground submit in one statement (`mailbox.submit_fused(interrupt=True)`, submit.sql step 5):
each of its outcomes — won on an idle thread (the epoch moved on, the queued work superseded, this
dispatch claimed), refused for a claim the interrupt must cancel first, refused for a pause that holds
the new dispatch — and the race with a claim that commits while the statement waits for the thread's
epoch row. A refusal writes nothing; the caller goes through the port (`mailbox.submit`)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mailbox_app import store
from mailbox_app.contract.inbox import PauseScope
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import ThreadEpoch
from mailbox_app.services import mailbox, pauses
from mailbox_app.store import conformance
from runs_app.models import Message, Run
from tests.support.blocking import held_transaction, in_background, wait_blocked
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = 30_000


def _foreground(thread_id: str, text: str = "now") -> mailbox.SubmitResult | mailbox.Replayed:
    request = RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)])
    return mailbox.submit_fused(request, interrupt=True)


def _epoch(thread_id: str) -> int:
    return ThreadEpoch.objects.get(thread_id=thread_id).current_epoch


def _snapshot(thread_id: str) -> tuple[object, ...]:
    """Everything a submit writes, as counts and states."""
    dispatches = sorted((d.dispatch_id, d.status, d.dispatch_epoch) for d in store.list_dispatches(thread_id))
    return (
        dispatches,
        _epoch(thread_id),
        Message.objects.filter(thread_id=thread_id).count(),
        Run.objects.filter(thread_id=thread_id).count(),
    )


def test_on_an_idle_thread_it_moves_the_epoch_supersedes_the_queue_and_runs_in_one_statement() -> None:
    later = mailbox.submit_background(
        RunRequest(thread_id="t-idle", messages=[ChatMessage.user("later")], start_after_ms=600_000)
    )
    epoch = _epoch("t-idle")
    with CaptureQueriesContext(connection) as queries:
        result = _foreground("t-idle")
    assert len(queries) == 1  # awaken_submit, the whole transaction
    assert isinstance(result, mailbox.SubmitResult) and result.status is mailbox.SubmitStatus.RUNNING
    assert _epoch("t-idle") == epoch + 1
    rows = {d.dispatch_id: d for d in store.list_dispatches("t-idle")}
    assert rows[later.dispatch_id].status is DispatchStatus.SUPERSEDED
    assert rows[later.dispatch_id].last_error == "queued dispatch superseded by interrupt"
    claimed = rows[result.dispatch_id]
    assert claimed.status is DispatchStatus.CLAIMED and claimed.dispatch_epoch == epoch + 1
    # the request as stored names the run it was meant to create (a foreground request carries no
    # extras of its own: JSON null became an object, not [null, {...}], which no start could read)
    stored = Run.objects.get(run_id=result.run_id).request
    assert stored is not None and stored["request_extras"] == {"run_id_hint": result.run_id}


def test_a_new_thread_starts_at_epoch_one_as_the_ports_interrupt_leaves_it() -> None:
    result = _foreground("t-new")
    assert isinstance(result, mailbox.SubmitResult) and result.status is mailbox.SubmitStatus.RUNNING
    assert _epoch("t-new") == 1


def test_a_thread_with_a_claim_is_refused_and_nothing_is_written() -> None:
    running = mailbox.submit_background(RunRequest(thread_id="t-busy", messages=[ChatMessage.user("a")]))
    assert running.status is mailbox.SubmitStatus.RUNNING  # claimed inline
    before = _snapshot("t-busy")
    with pytest.raises(mailbox.InterruptThroughPort):
        _foreground("t-busy")
    assert _snapshot("t-busy") == before


def test_a_paused_thread_is_refused_and_the_ports_submit_queues_it() -> None:
    mailbox.submit_background(
        RunRequest(thread_id="t-held", messages=[ChatMessage.user("a")], start_after_ms=60_000)
    )
    pauses.pause(PauseScope.THREAD, "t-held", paused_by="test", by_operator=True)
    before = _snapshot("t-held")
    with pytest.raises(mailbox.InterruptThroughPort):
        _foreground("t-held")
    assert _snapshot("t-held") == before
    queued = mailbox.submit(RunRequest(thread_id="t-held", messages=[ChatMessage.user("b")]))
    assert queued.status is mailbox.SubmitStatus.QUEUED


def test_a_claim_that_commits_while_it_waits_for_the_epoch_row_makes_it_refuse() -> None:
    """The check for a claim is made under the epoch row's lock: a claim holding that row when the
    statement reaches it commits first, and the statement then sees it (not a stale "idle")."""
    mailbox.submit_background(RunRequest(thread_id="t-race", messages=[ChatMessage.user("seed")]))
    seeded = store.list_dispatches("t-race")[0]
    assert conformance.ack(seeded.dispatch_id, seeded.claim_token or "", seeded.updated_at)  # idle thread
    store.enqueue(make_dispatch("queued-1", "t-race", available_at=0), owner_key="")
    with held_transaction(lambda: store.claim("t-race", "w", LEASE, 10_000_000_000_000)) as claim:
        submitter = in_background(lambda: _foreground("t-race", "interrupting"))
        wait_blocked(submitter.pid, what="the foreground statement waits for the epoch row")
        claimed = claim.release()
        with pytest.raises(mailbox.InterruptThroughPort):
            submitter.wait()
    assert [d.dispatch_id for d in claimed] == ["queued-1"]
    statuses = {d.dispatch_id: d.status for d in store.list_dispatches("t-race")}
    assert statuses["queued-1"] is DispatchStatus.CLAIMED  # not superseded under its claim
    assert len(statuses) == 2  # nothing of the refused submit
