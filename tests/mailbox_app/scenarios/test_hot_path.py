"""The attempt's finish on the hot path: a statement that cannot apply is not sent, and what it guarded
still holds. The webhook outbox: the run store's finish statement reads the run's subscription beside
the run, so a finish with no subscription and no AWAKEN_WEBHOOK_URL sends no outbox statement, while a
subscription added after the submit (the run already executing) or a default URL still gets its row.

Real PostgreSQL and Redis; the attempt is started and finished in this process (no worker runs it).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mailbox_app import store
from mailbox_app.agents.base import COMPLETED, RunResult
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import WebhookDelivery
from mailbox_app.services import mailbox
from mailbox_app.webhooks import outbox
from mailbox_app.worker import attempt

pytestmark = pytest.mark.django_db(transaction=True)

URL = "https://hooks.example.com/awaken"  # never called here: only the outbox rows are checked
DEFAULT_URL = "https://default.example.com/awaken"


@pytest.fixture
def hook_settings(engine_settings: Any, clean_redis: Any) -> Any:
    engine_settings.AWAKEN_WEBHOOK_URL = ""
    return engine_settings


def _started(thread_id: str) -> attempt.Started:
    submitted = mailbox.submit_background(RunRequest(thread_id=thread_id, messages=[ChatMessage.user("hi")]))
    claimed = store.load_dispatch(submitted.dispatch_id)
    assert claimed is not None and claimed.status is DispatchStatus.CLAIMED
    started = attempt.start(claimed, f"instance-{thread_id}", "hot-path-node")
    assert isinstance(started, attempt.Started)
    return started


def _finish(started: attempt.Started) -> tuple[attempt.FinishOutcome, list[str]]:
    """The attempt's finish, and the statements it sent."""
    reply = RunResult(final_output="done", messages=(ChatMessage.assistant("done"),))
    with CaptureQueriesContext(connection) as queries:
        finished = attempt.finish(started, COMPLETED, reply, None, cancelled=False)
    return finished, [q["sql"] for q in queries.captured_queries]


def _outbox(run_id: str) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(run_id=run_id))


def _outbox_statements(statements: list[str]) -> list[str]:
    return [s for s in statements if "mailbox_webhook_outbox" in s]


def test_a_finish_without_subscription_or_default_url_sends_no_outbox_statement(hook_settings: Any) -> None:
    started = _started("t-hot-none")
    finished, statements = _finish(started)
    assert isinstance(finished, attempt.Finished)
    assert finished.run is not None and finished.run.status is RunStatus.DONE
    assert _outbox_statements(statements) == []
    assert _outbox(started.run.run_id) == []


def test_a_subscription_added_after_the_submit_while_the_run_executes_still_gets_its_row(
    hook_settings: Any,
) -> None:
    """Subscribed (and committed) after the run started: the finish's own read sees it."""
    started = _started("t-hot-late")
    outbox.subscribe(started.run.run_id, URL)
    finished, statements = _finish(started)
    assert isinstance(finished, attempt.Finished)
    assert len(_outbox_statements(statements)) == 1
    rows = _outbox(started.run.run_id)
    assert [(r.event, r.url) for r in rows] == [(outbox.EVENT_FINISHED, URL)]
    assert rows[0].payload["status"] == RunStatus.DONE.value
    assert rows[0].payload["final_output"] == "done"


def test_the_default_url_gets_a_row_for_a_run_without_subscription(hook_settings: Any) -> None:
    hook_settings.AWAKEN_WEBHOOK_URL = DEFAULT_URL
    started = _started("t-hot-default")
    finished, _ = _finish(started)
    assert isinstance(finished, attempt.Finished)
    assert [(r.event, r.url) for r in _outbox(started.run.run_id)] == [(outbox.EVENT_FINISHED, DEFAULT_URL)]


def test_a_note_applies_only_to_the_record_it_was_taken_with(hook_settings: Any) -> None:
    """A record the finish statement did not return (another object, even an equal one) is looked up
    by the outbox statement itself, so no stale note can drop a row."""
    started = _started("t-hot-note")
    outbox.subscribe(started.run.run_id, URL)
    done = started.run.model_copy(update={"status": RunStatus.DONE})
    outbox.note_subscription(done.model_copy(), None)  # an equal record, not this one
    assert outbox.record_run_event(done) is not None
    outbox.note_subscription(done, None)
    assert outbox.record_run_event(done) is None  # trusted for that very object: nothing sent
    assert outbox.record_run_event(done) is not None  # the note is used once
    assert len(_outbox(started.run.run_id)) == 2
