"""OpenTelemetry (issue 21 item 9): one run followed from its HTTP request through the submit, the Celery
task, the attempt, the agent and its step, the finish, to the webhook delivery — spans taken by the SDK's
in-memory exporter from the real Django, Celery, psycopg and Redis instrumentations and the project's
own spans (mailbox_app/observability/tracing.py), with a real worker in this process; and, with no
exporter configured, nothing of OpenTelemetry imported or installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from rest_framework.authtoken.models import Token

from awaken_project import telemetry
from awaken_project.celery import app
from mailbox_app.agents import echo
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.observability import tracing
from mailbox_app.webhooks import outbox
from runs_app import store as run_store
from runs_app.models import Message
from tests.mailbox_app.webhooks.receivers import PROJECT_SECRET, Receiver
from tests.support.api import new_user, post_json, user_client
from tests.support.servers import PROJECT_ROOT, asgi_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def spans(engine_settings: Any) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.install(telemetry.provider_for("test", {}, exporter, batch=False), set_global=False)
    try:
        yield exporter
    finally:
        telemetry.uninstall()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def traced_worker(
    transactional_db: None,
    spans: InMemorySpanExporter,
    clean_redis: redis.Redis,
    receiver: Receiver,
    settings: Any,
) -> Iterator[Any]:
    """A worker in this process on the dispatch and the webhook queues, every run's finish posted."""
    settings.AWAKEN_WEBHOOK_ALLOW_PRIVATE = True
    settings.AWAKEN_WEBHOOK_SECRET = PROJECT_SECRET
    settings.AWAKEN_WEBHOOK_URL = receiver.url("/traced")
    queues = [app.conf.task_default_queue, outbox.QUEUE]
    try:
        with start_worker(
            app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING", queues=queues
        ) as worker:
            yield worker
    finally:
        app.amqp.queues.deselect([outbox.QUEUE])


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


def _one(found: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(found) == 1, (what, [s.name for s in found])
    return found[0]


def test_one_run_is_one_trace_from_the_http_request_to_the_webhook(
    traced_worker: Any, spans: InMemorySpanExporter, receiver: Receiver
) -> None:
    client = user_client("tracer")  # after the instrumentation: its handler loads the tracing middleware
    submitted = post_json(
        client, "/api/v1/threads/t-traced/runs", {"messages": [{"role": "user", "content": "steps 1"}]}
    )
    assert submitted.status_code == 201, submitted.content
    run_id, dispatch_id = submitted.json()["run_id"], submitted.json()["dispatch_id"]
    wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is RunStatus.DONE, timeout=30)
    wait_until(receiver.accepted, timeout=30, what="the webhook delivered")

    def finished() -> list[ReadableSpan] | None:
        done = list(spans.get_finished_spans())
        return done if any(s.name == tracing.WEBHOOK for s in done) else None

    finished_spans = wait_until(finished, timeout=30, what="the webhook delivery's span")
    by_id = {s.context.span_id: s for s in finished_spans}

    def named(name: str) -> list[ReadableSpan]:
        return [s for s in finished_spans if s.name == name]

    submit = _one(named(tracing.SUBMIT), "submit")
    assert (
        dict(submit.attributes or {}).items()
        >= {
            "awaken.thread_id": "t-traced",
            "awaken.run_id": run_id,
            "awaken.dispatch_id": dispatch_id,
        }.items()
    )
    http = _ancestors(submit, by_id)[-1]  # the request's server span is the root of the submit
    assert http.kind is SpanKind.SERVER and "threads" in str(
        (http.attributes or {}).get("http.route", http.name)
    )
    trace_id = http.context.trace_id

    attempt = _one(
        [s for s in named(tracing.ATTEMPT) if (s.attributes or {}).get("awaken.run_id") == run_id], "attempt"
    )
    # the doorbell carried the context (Celery's instrumentation), and the durable request linked it
    assert attempt.context.trace_id == trace_id
    assert submit.context.span_id in {link.context.span_id for link in attempt.links}
    assert not any("token" in key for key in (attempt.attributes or {}))  # never the claim token
    celery_task = _ancestors(attempt, by_id)[0]
    assert celery_task.kind is SpanKind.CONSUMER and "mailbox.run_claimed" in celery_task.name

    step = _one(named(tracing.STEP), "step")
    asked = Message.objects.get(thread_id="t-traced", role="user").message_id  # echo keys steps by it
    assert (step.attributes or {}).get("awaken.step_key") == echo.step_key(asked, 1)
    assert attempt in _ancestors(step, by_id)
    agent = _one(named(tracing.AGENT), "agent")
    assert agent in _ancestors(step, by_id) and (agent.attributes or {}).get("awaken.agent_id") == "default"
    finish = _one(named(tracing.FINISH), "finish")
    assert attempt in _ancestors(finish, by_id)

    webhook = _one(named(tracing.WEBHOOK), "webhook delivery")
    assert webhook.context.trace_id == trace_id
    assert finish in _ancestors(webhook, by_id)  # rung from the finish: its task continues the trace
    assert (webhook.attributes or {}).get("awaken.outcome") == "delivered"
    # the official instrumentations took part: SQL statements and Redis commands inside the run's trace
    in_trace = [s for s in finished_spans if s.context.trace_id == trace_id]
    assert any((s.attributes or {}).get("db.system") == "postgresql" for s in in_trace)
    assert any((s.attributes or {}).get("db.system") == "redis" for s in in_trace)


def test_an_attempt_run_by_a_later_doorbell_still_links_to_its_submit(
    spans: InMemorySpanExporter, engine_settings: Any, transactional_db: None, clean_redis: redis.Redis
) -> None:
    """The same dispatch run by a doorbell that is not the submit's (here: no worker when it was rung, a
    drain from a context of its own later) is a trace of its own, linked to the submit by the context
    kept with the dispatch's request."""
    from mailbox_app import store  # noqa: PLC0415
    from mailbox_app.services import mailbox  # noqa: PLC0415
    from mailbox_app.worker.execution import drain_thread  # noqa: PLC0415
    from tests.support.worker_farm import echo_request  # noqa: PLC0415

    with tracing.span("test.client"):
        submitted = mailbox.submit_background(echo_request("t-later", "hello"))  # claimed inline
    clean_redis.flushdb()  # its hand-over doorbell is lost: no worker ran it
    claimed = store.load_dispatch(submitted.dispatch_id)
    assert claimed is not None and claimed.claim_token
    drain_thread("t-later", first=claimed)  # what a later doorbell does, in a context of its own
    done = list(spans.get_finished_spans())
    submit = _one([s for s in done if s.name == tracing.SUBMIT], "submit")
    attempt = _one([s for s in done if s.name == tracing.ATTEMPT], "attempt")
    assert (attempt.attributes or {}).get("awaken.run_id") == submitted.run_id
    assert attempt.context.trace_id != submit.context.trace_id
    assert [link.context.span_id for link in attempt.links] == [submit.context.span_id]


CHECK_OFF = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")
import django
django.setup()
from awaken_project import telemetry
from mailbox_app.observability import tracing
from mailbox_app.services import mailbox
from mailbox_app.worker import execution
on = telemetry.configure("web")
print(json.dumps({
    "on": on,
    # redis-py (8.x) itself imports the OpenTelemetry API and metrics SDK when they are installed (its
    # own observability, off until initialised); what the project would install is the tracing SDK and
    # the instrumentations
    "imported": sorted(
        m for m in sys.modules if m.startswith(("opentelemetry.instrumentation", "opentelemetry.sdk.trace"))
    ),
    "no_span": tracing.span("x") is tracing.NO_SPAN,
    "carrier": tracing.carrier(),
    "middleware": [m for m in __import__("django.conf").conf.settings.MIDDLEWARE if "opentelemetry" in m],
}))
"""


def _probe(env: dict[str, str]) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | env
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + CHECK_OFF],
        cwd=PROJECT_ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_without_an_exporter_nothing_of_opentelemetry_is_imported_or_installed() -> None:
    off = _probe({})
    assert off == {"on": False, "imported": [], "no_span": True, "carrier": None, "middleware": []}
    assert (
        _probe({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})["on"]
        is False
    )
    on = _probe({"OTEL_TRACES_EXPORTER": "console"})
    assert on["on"] is True and on["no_span"] is False and on["middleware"], on


def test_the_asgi_server_traces_a_request_with_the_console_exporter(
    transactional_db: None, tmp_path: Path
) -> None:
    """The real web server (gunicorn + uvicorn, awaken_project/asgi.py) with OTEL_TRACES_EXPORTER=console:
    a request's server span is printed with its route, and the async request path raises no context
    error."""
    token = Token.objects.create(user=new_user("asgi-tracer")).key
    with asgi_server(tmp_path, env={"OTEL_TRACES_EXPORTER": "console"}) as web:
        request = urllib.request.Request(
            f"http://127.0.0.1:{web.port}/api/v1/threads", headers={"Authorization": f"Token {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200

        def printed() -> str | None:
            log = web.log_tail()
            return log if '"http.route": "api/v1/threads"' in log else None

        log = str(wait_until(printed, timeout=30, what="the request's span printed"))  # batched: ~5 s
    assert '"kind": "SpanKind.SERVER"' in log
    assert "Failed to detach context" not in log and "Traceback" not in log, log
