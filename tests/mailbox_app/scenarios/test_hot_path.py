"""The attempt's finish on the hot path: with the built-in run store it is one statement
(mailbox_app/store/runs_tables/attempt.sql's awaken_finish), which writes the run's webhook outbox row
itself — none when there is no subscription and no AWAKEN_WEBHOOK_URL, one for a subscription added after
the submit (the run already executing: the finish's own read sees it), one for the default URL.

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


def _finish_statements(statements: list[str]) -> list[str]:
    return [s for s in statements if "awaken_finish" in s]


def test_a_finish_without_subscription_or_default_url_writes_no_outbox_row_in_one_statement(
    hook_settings: Any,
) -> None:
    started = _started("t-hot-none")
    finished, statements = _finish(started)
    assert isinstance(finished, attempt.Finished)
    assert finished.run is not None and finished.run.status is RunStatus.DONE
    assert len(statements) == 1 and len(_finish_statements(statements)) == 1, statements
    assert _outbox(started.run.run_id) == []


def test_a_subscription_added_after_the_submit_while_the_run_executes_still_gets_its_row(
    hook_settings: Any,
) -> None:
    """Subscribed (and committed) after the run started: the finish's own read sees it."""
    started = _started("t-hot-late")
    outbox.subscribe(started.run.run_id, URL)
    finished, statements = _finish(started)
    assert isinstance(finished, attempt.Finished)
    assert len(statements) == 1 and len(_finish_statements(statements)) == 1, statements
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


def test_the_port_paths_outbox_statement_finds_a_late_subscription_too(hook_settings: Any) -> None:
    """The run store's port path (a host's own store, or limits) records the event with its own
    statement, which looks the subscription up itself."""
    started = _started("t-hot-port")
    outbox.subscribe(started.run.run_id, URL)
    done = started.run.model_copy(update={"status": RunStatus.DONE})
    assert outbox.record_run_event(done) is not None
    assert [(r.event, r.url) for r in _outbox(started.run.run_id)] == [(outbox.EVENT_FINISHED, URL)]
