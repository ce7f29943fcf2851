"""An operator's requeue of a dead letter, end to end on a real worker: the admin action and
`manage.py mailbox_requeue` move the dispatch back to Queued (the table's DeadLetter -> Queued edge) and
reopen the run it ended (the lifecycle's REQUEUE_DEAD_LETTER edge), the work runs again and the run the
client knows ends Done with the new result. A run that ended otherwise is never reopened."""

from __future__ import annotations

import threading
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from mailbox_app import store
from mailbox_app.agents.base import ResolveFailed, RunContext, RunResult
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunReopen, RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.services import mailbox
from mailbox_app.services.operator import Requeued, requeue_dead_letters
from runs_app import store as run_store
from tests.support.agents import TEST_AGENTS
from tests.support.dispatches import make_dispatch
from tests.support.waiting import wait_until

DISPATCHES = "admin:mailbox_app_dispatch_changelist"


class FailsFirstAgent:
    """Fails permanently (dead letter at once) while `BROKEN` is set, then answers `recovered`."""

    BROKEN = threading.Event()

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        if FailsFirstAgent.BROKEN.is_set():
            raise ResolveFailed("backend gone")
        return RunResult(final_output="recovered", messages=(ChatMessage.assistant("recovered"),))


@pytest.fixture
def agents(mailbox_worker: Any, engine_settings: Any) -> Any:
    engine_settings.AWAKEN_AGENTS = {**TEST_AGENTS, "fails-first": f"{__name__}.FailsFirstAgent"}
    FailsFirstAgent.BROKEN.set()
    yield engine_settings
    FailsFirstAgent.BROKEN.clear()


@pytest.fixture
def operator_client(django_user_model: Any, settings: Any) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = django_user_model.objects.create_user("requeuer", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_dispatch", "change_dispatch"]))
    client = Client()
    client.force_login(user)
    return client


def _done(run_id: str) -> RunRecord | None:
    run = run_store.load_run(run_id=run_id)
    return run if run is not None and run.status is RunStatus.DONE else None


def _dead_lettered_run(thread_id: str) -> mailbox.SubmitResult:
    """A run its dispatch's permanent failure ended: dispatch dead-lettered, run Done with an error."""
    submitted = mailbox.submit_background(
        RunRequest(thread_id=thread_id, messages=[ChatMessage.user("work")], agent_id="fails-first")
    )
    run = wait_until(lambda: _done(submitted.run_id), what="dead-lettered run done")
    assert run.termination_reason is not None and run.termination_reason.type == "error"
    dead = store.load_dispatch(submitted.dispatch_id)
    assert dead is not None and dead.status is DispatchStatus.DEAD_LETTER
    return submitted


def _assert_ran_again(submitted: mailbox.SubmitResult) -> None:
    run = wait_until(
        lambda: (r := _done(submitted.run_id)) and r.final_output == "recovered" and r,
        what="requeued run done with the new result",
    )
    assert run.termination_reason == TerminationReason(type="natural_end")
    assert run.error_payload is None
    acked = store.load_dispatch(submitted.dispatch_id)
    assert acked is not None and acked.status is DispatchStatus.ACKED and acked.attempt_count == 0
    thread = run_store.load_thread(thread_id=submitted.thread_id)
    assert thread is not None and thread.latest_run_id == submitted.run_id and thread.open_run_id is None
    log = run_store.load_messages(thread_id=submitted.thread_id) or []
    assert [m.text for m in log] == ["work", "recovered"]


def test_the_admin_requeue_runs_the_dead_letter_again_on_its_run(
    agents: Any, operator_client: Client
) -> None:
    submitted = _dead_lettered_run("t-rq-admin")
    FailsFirstAgent.BROKEN.clear()
    response = operator_client.post(
        reverse(DISPATCHES),
        {
            "action": "requeue_dead_letter",
            "_selected_action": [submitted.dispatch_id],
            "index": 0,
            "post": "yes",
        },
        follow=True,
    )
    assert "Requeued 1 dead-lettered dispatch." in response.content.decode()
    _assert_ran_again(submitted)


def test_the_requeue_command_runs_the_dead_letter_again_on_its_run(agents: Any) -> None:
    submitted = _dead_lettered_run("t-rq-command")
    FailsFirstAgent.BROKEN.clear()
    out = StringIO()
    call_command("mailbox_requeue", "--thread", submitted.thread_id, stdout=out)
    assert 'requeue: {"requeued": 1}' in out.getvalue()
    _assert_ran_again(submitted)


def test_a_done_run_whose_dispatch_was_acked_is_never_reopened(agents: Any) -> None:
    FailsFirstAgent.BROKEN.clear()
    submitted = mailbox.submit_background(
        RunRequest(thread_id="t-rq-acked", messages=[ChatMessage.user("work")], agent_id="fails-first")
    )
    run = wait_until(lambda: _done(submitted.run_id), what="run done")
    assert run.final_output == "recovered"
    reopened = run_store.reopen_run(run_id=submitted.run_id, dispatch_id=submitted.dispatch_id, now=now_ms())
    assert reopened is RunReopen.REFUSED
    assert requeue_dead_letters(dispatch_ids=[submitted.dispatch_id]) == Requeued()
    assert run_store.load_run(run_id=submitted.run_id) == run
    acked = store.load_dispatch(submitted.dispatch_id)
    assert acked is not None and acked.status is DispatchStatus.ACKED


# --- a dead letter whose run ended otherwise (no worker) ---------------------------------------------


def _dead_letter_of(run: RunRecord, dispatch_id: str) -> None:
    run_store.create_run(run=run)
    now = now_ms()
    store.enqueue(
        make_dispatch(
            dispatch_id, run.thread_id, run.run_id, available_at=now, created_at=now, max_attempts=1
        )
    )
    [claimed] = store.claim(run.thread_id, "c", 30_000, now)
    store.nack(dispatch_id, claimed.claim_token or "", now, "boom", now)


@pytest.mark.django_db
def test_a_dead_letter_whose_run_another_dispatch_finished_stays_dead_lettered(
    operator_client: Client,
) -> None:
    """The run ended naturally under a later dispatch: requeueing the older dead letter would throw
    that result away, so the run stays done and the dead letter stays where it is (reported)."""
    finished = RunRecord(
        run_id="r-finished",
        thread_id="t-rq-other",
        status=RunStatus.DONE,
        dispatch_id="d-later",
        termination_reason=TerminationReason(type="natural_end"),
        final_output="the answer",
        created_at=1,
        updated_at=1,
    )
    _dead_letter_of(finished, "d-older")
    assert run_store.reopen_run(run_id="r-finished", dispatch_id="d-older", now=now_ms()) is RunReopen.REFUSED
    response = operator_client.post(
        reverse(DISPATCHES),
        {"action": "requeue_dead_letter", "_selected_action": ["d-older"], "index": 0, "post": "yes"},
        follow=True,
    )
    page = response.content.decode()
    assert "Requeued 0 dead-lettered dispatches. Left 1 dispatch dead-lettered" in page
    assert "d-older (run r-finished)" in page
    kept = store.load_dispatch("d-older")
    assert kept is not None and kept.status is DispatchStatus.DEAD_LETTER
    run = run_store.load_run(run_id="r-finished")
    assert run is not None and run.status is RunStatus.DONE and run.final_output == "the answer"
    with pytest.raises(CommandError, match="left as they are: their run is done"):
        call_command("mailbox_requeue", "d-older", stdout=StringIO())
    # a bulk requeue reports the refused row and succeeds (a scheduled run must not fail on it)
    out = StringIO()
    call_command("mailbox_requeue", "--all-dead-letter", stdout=out)
    assert "d-older" in out.getvalue() and "refused" in out.getvalue()
    kept = store.load_dispatch("d-older")
    assert kept is not None and kept.status is DispatchStatus.DEAD_LETTER


@pytest.mark.django_db
def test_a_dead_letter_whose_run_is_not_done_yet_is_requeued_without_a_reopen() -> None:
    """Reconcile has not ended the run yet (Created): it takes the requeued dispatch as it is."""
    _dead_letter_of(RunRecord(run_id="r-open", thread_id="t-rq-open", created_at=1, updated_at=1), "d-open")
    outcome = requeue_dead_letters(dispatch_ids=["d-open"])
    assert outcome == Requeued(requeued=["d-open"])
    run = run_store.load_run(run_id="r-open")
    assert run is not None and run.status is RunStatus.CREATED and run.updated_at > 1
    requeued = store.load_dispatch("d-open")
    assert requeued is not None and requeued.status is DispatchStatus.QUEUED
