"""Waiting for a run in one call: `POST threads/{id}/runs/wait` (submit, then wait) and `GET runs/{id}/join`.

The views are DRF views for everything they share with the others (authentication, throttling,
validation, the submit, the error shape, the schema); when the answer has to wait they return a
`PendingWait` (the 202 answer), and `awaiting` — the async Django view the route calls — does the wait on
the event loop: no thread, no DB connection (given back first) and no view permit (awaken_project/asgi.py)
is held meanwhile. The wait subscribes to the run's feed (`RunFeed` in runs_app/api/sse.py: one reader
blocked in `XREAD` per run per process, shared with the run's SSE streams), so 150 waits on one run add
one Redis connection, not 150. It reads PostgreSQL only when a `run_finish` arrives, every BACKSTOP_S (an
event lost to a Redis outage; while the feed is down the wait keeps to that) and at the end, so it is
woken by the run, not by polling. The feed has taken its start position before the first check: whatever
ends the run after that check appends its event after that position, and the feed hands it over.

A run held live for a decision (its agent asked for one and holds its claim for `AWAKEN_LIVE_SUSPEND_HOLD_MS`,
mailbox_app/agents/base.py `request_decision`) is still `running` in PostgreSQL, yet what the caller waits
for has happened: the run waits for a decision. Its stream says so — its newest events are the open
approval requests (`tool_call_done` suspended, with the hold) — and the wait answers at once with the run
as `waiting`, its `waiting.tickets` the requests and `waiting.live_until` the end of the hold (a decision
before then is taken by the running run, after it through the queue). A join after a decision does not
answer the run it decided: a live decision appends `decision_received` before the decider hears
"delivered", so the request is no longer the newest event, and a durable one queued a dispatch that
continues the waiting run, which the join waits for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django import db
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.storage import RunRecord
from mailbox_app.realtime import events
from mailbox_app.services import mailbox
from runs_app import store
from runs_app.api import serializers as s
from runs_app.api import views
from runs_app.api.edge import EdgeCheckedView, not_taken_or_404, run_or_404, validated
from runs_app.api.errors import ApiError
from runs_app.api.responses import JSON, errors
from runs_app.api.run_serializers import DEFAULT_WAIT_S, MAX_WAIT_S, RunOut, RunPendingOut, RunWaitIn
from runs_app.api.sse import TERMINAL_EVENTS, Batch, RunFeed, run_feed

log = logging.getLogger(__name__)
BACKSTOP_S = 10.0
PERMIT_SCOPE_KEY = "awaken.view_permit"  # set by awaken_project/asgi.py's BoundedViews
STOPPED = frozenset({RunStatus.DONE, RunStatus.WAITING})  # a run that finished or suspended
HELD_SCAN = 20  # newest events read to find the approval requests a run holds open
TOOL_CALL_START, TOOL_CALL_DONE = "tool_call_start", "tool_call_done"


@dataclass(frozen=True, slots=True)
class HeldRun:
    """A running run held live for decisions: `requests` are its open approval requests (the
    `tool_call_done` suspended events' data, oldest first), `live_until` the end of its hold (Unix ms)."""

    run: RunRecord
    requests: list[dict[str, Any]]
    live_until: int


Seen = RunRecord | HeldRun
Probe = Callable[[], tuple[bool, Seen | None]]  # (over?, the run as read)


class PendingWait(Response):
    """A view's answer that `awaiting` completes: 200 with the run once `probe` says it is over, else
    this 202 (its `data`, with the run's status when the wait ended)."""

    def __init__(self, run: RunRecord, *, probe: Probe, timeout_s: float, extra: dict[str, Any]) -> None:
        super().__init__(_pending_body(run, timeout_s, extra), status=202)
        self.run_id, self.probe, self.timeout_s = run.run_id, probe, timeout_s

    def answer(self, seen: Seen | None, over: bool) -> None:
        if seen is not None and over:
            self.status_code, self.data = 200, answer_json(seen)
        elif seen is not None:
            run = seen.run if isinstance(seen, HeldRun) else seen
            self.data = {**self.data, "status": run.status.value}


def answer_json(seen: Seen) -> dict[str, Any]:
    """The run as a wait answers it: a held run as `waiting` on its open approval requests."""
    if isinstance(seen, RunRecord):
        return s.run_json(seen)
    run, requests = seen.run, seen.requests
    ids = [str(r.get("tool_call_id") or "") for r in requests]
    tickets = [
        {
            "ticket_id": call_id,
            "tool_call_id": call_id,
            "tool_name": request.get("name"),
            "arguments": request.get("arguments"),
        }
        for call_id, request in zip(ids, requests, strict=True)
    ]
    waiting = {
        "reason": "tool_permission",
        "ticket_ids": ids,
        "tickets": tickets,
        "since_dispatch_id": run.dispatch_id,
        "live_until": s.iso_ms(seen.live_until),
    }
    return {**s.run_json(run), "status": RunStatus.WAITING.value, "waiting": waiting}


def _pending_body(run: RunRecord, timeout_s: float, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        **extra,
        "status": run.status.value,
        "detail": f"the run did not finish or suspend within {timeout_s:g} s; "
        f"GET /api/v1/runs/{run.run_id}/join to keep waiting",
    }


def awaiting(view: Callable[..., HttpResponseBase]) -> Callable[..., Coroutine[Any, Any, HttpResponseBase]]:
    """The async Django view around a DRF view (`as_view()`) that may answer `PendingWait`."""

    async def run_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = await sync_to_async(_sync_phase)(view, request, args, kwargs)
        if not isinstance(response, PendingWait):
            return response
        async with _permit_released(request):
            over, seen = await wait_until_over(response.run_id, response.probe, response.timeout_s)
        response.answer(seen, over)
        return response

    functools.update_wrapper(run_view, view)  # keeps `cls` / `initkwargs` (the schema) and csrf_exempt
    return run_view


def _sync_phase(
    view: Callable[..., HttpResponseBase], request: HttpRequest, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> HttpResponseBase:
    response = view(request, *args, **kwargs)
    if isinstance(response, PendingWait):
        _release_connections()  # the wait holds no DB connection
    return response


def _release_connections() -> None:
    for conn in db.connections.all(initialized_only=True):
        if not conn.in_atomic_block:  # (a test's wrapping transaction stays)
            conn.close()


@asynccontextmanager
async def _permit_released(request: HttpRequest) -> AsyncIterator[None]:
    permit = getattr(request, "scope", {}).get(PERMIT_SCOPE_KEY)
    if permit is None:  # not behind BoundedViews (the test client, another server)
        yield
        return
    release, reacquire = permit
    release()
    try:
        yield
    finally:
        await reacquire()


async def wait_until_over(run_id: str, probe: Probe, timeout_s: float) -> tuple[bool, Seen | None]:
    """Block until `probe` says the run is over or `timeout_s` passed; the last probe's answer."""
    loop_time = asyncio.get_running_loop().time
    deadline = loop_time() + timeout_s
    subscription = await _subscribed(run_id)
    try:
        over, run = await _probe(probe)
        next_probe = loop_time() + BACKSTOP_S
        while not over and (now := loop_time()) < deadline:
            if subscription is None:  # the feed failed: a new one, tried once per backstop interval
                subscription = await _subscribed(run_id)
            until = min(deadline, next_probe)
            arrived = await _finish_arrives(subscription, until - now)
            if arrived is None:  # the feed failed meanwhile: the backstop alone until the next probe
                _unsubscribe(subscription)
                subscription = None
                await asyncio.sleep(max(until - loop_time(), 0))
            if arrived or loop_time() >= until:
                over, run = await _probe(probe)
                next_probe = loop_time() + BACKSTOP_S
        return over, run
    finally:
        _unsubscribe(subscription)


Subscription = tuple[RunFeed, "asyncio.Queue[Batch]"]


async def _subscribed(run_id: str) -> Subscription | None:
    """A queue on the run's feed once the feed has its start position; None when Redis fails."""
    feed = run_feed(run_id)
    queue = feed.subscribe()
    try:
        await feed.wait_ready()
    except Exception:  # noqa: BLE001 - the wait goes on, on the backstop alone
        feed.unsubscribe(queue)
        log.warning("run %s: no event feed, the wait reads PostgreSQL every %g s", run_id, BACKSTOP_S)
        return None
    except BaseException:
        feed.unsubscribe(queue)
        raise
    return feed, queue


def _unsubscribe(subscription: Subscription | None) -> None:
    if subscription is not None:
        feed, queue = subscription
        feed.unsubscribe(queue)


async def _finish_arrives(subscription: Subscription | None, timeout_s: float) -> bool | None:
    """Whether the feed hands over a `run_finish` or an approval request within `timeout_s` (without a
    feed: False after sleeping that long); None when the feed fails."""
    loop_time = asyncio.get_running_loop().time
    deadline = loop_time() + timeout_s
    if subscription is None:
        await asyncio.sleep(max(timeout_s, 0))
        return False
    while (left := deadline - loop_time()) > 0:
        try:
            batch = await asyncio.wait_for(subscription[1].get(), timeout=left)
        except TimeoutError:
            return False
        if isinstance(batch, BaseException):
            return None
        if any(event.type in TERMINAL_EVENTS or _asks(event) for event in batch):
            return True
    return False


def _asks(event: events.RunEvent) -> bool:
    """An approval request: a tool call suspended for a decision."""
    return event.type == TOOL_CALL_DONE and event.data.get("status") == "suspended"


async def _probe(probe: Probe) -> tuple[bool, Seen | None]:
    def read() -> tuple[bool, Seen | None]:
        try:
            return probe()
        finally:
            _release_connections()

    return await sync_to_async(read)()


def submit_probe(run_id: str, dispatch_id: str) -> Probe:
    """The submit's run is over once its dispatch has ended (not queued or claimed: a stream's earlier
    `run_finish`, of a waiting run this submit resumes, does not count) and the run stopped — or once
    the submit's own activation holds it live for a decision."""

    def probe() -> tuple[bool, Seen | None]:
        dispatch = mailbox.load_dispatch(dispatch_id)
        run = store.load_run(run_id=run_id)
        if run is None:
            return False, None
        live = dispatch is not None and dispatch.status in {DispatchStatus.QUEUED, DispatchStatus.CLAIMED}
        if not live:
            return run.status in STOPPED, run
        held = held_run(run) if run.dispatch_id == dispatch_id else None
        return (True, held) if held is not None else (False, run)

    return probe


def run_probe(run_id: str) -> Probe:
    """The run is over once it is done, waiting with nothing queued to continue it (a decision or input
    sent through the queue is such a continuation: the join waits for it), or held live for a
    decision."""

    def probe() -> tuple[bool, Seen | None]:
        run = store.load_run(run_id=run_id)
        if run is None:
            return False, None
        if run.status is RunStatus.DONE:
            return True, run
        if run.status is RunStatus.WAITING:
            return not _continued(run), run
        held = held_run(run) if run.status is RunStatus.RUNNING else None
        return (True, held) if held is not None else (False, run)

    return probe


def _continued(run: RunRecord) -> bool:
    """Whether a dispatch queued (or claimed, not started yet) will continue this waiting run."""
    pending = [DispatchStatus.QUEUED, DispatchStatus.CLAIMED]
    return any(d.run_id == run.run_id for d in mailbox.list_dispatches(run.thread_id, pending))


def held_run(run: RunRecord) -> HeldRun | None:
    """The run as held live for decisions when its newest events are open approval requests whose hold
    has not run out (an agent holding its claim for a decision emits nothing else); None otherwise, and
    when the stream cannot be read (the wait then goes by PostgreSQL alone)."""
    try:
        newest = events.newest_events(run.run_id, HELD_SCAN)
    except Exception:  # Redis is not the truth: without it a held run answers when it ends
        log.warning("run %s: its stream cannot be read; a live hold is not seen", run.run_id, exc_info=True)
        return None
    if not newest or not _asks(newest[0]):
        return None
    requests: list[dict[str, Any]] = []
    live_until = 0
    for event in newest:
        if event.type == TOOL_CALL_START:
            continue  # the request's own start, between the requests of several calls
        if not _asks(event):
            break
        requests.append(event.data)
        live_until = max(live_until, events.position(event.id)[0] + int(event.data.get("hold_ms") or 0))
    if live_until <= now_ms():  # no hold, or it ran out: the run is ending `waiting`
        return None
    return HeldRun(run, requests[::-1], live_until)


# --- views ------------------------------------------------------------------------------------------


class ThreadRunWaitView(views.ForegroundSubmit):
    """Submit as POST threads/{id}/runs does (its multitask default: interrupt) and answer the run once it
    is done or waiting for a decision; 202 with the run id when `wait_timeout_s` passes first."""

    @extend_schema(
        request=RunWaitIn,
        responses={(200, JSON): RunOut, (202, JSON): RunPendingOut, **errors(400, 404, 409)},
        description="Submit a run and wait until it is done or waiting (200, the run); 202 on timeout.",
    )
    def post(self, request: Request, thread_id: str) -> Response:
        data = validated(RunWaitIn, request)
        timeout_s = float(data.pop("wait_timeout_s", DEFAULT_WAIT_S))  # not part of the submit's key
        thread = not_taken_or_404(request, thread_id)
        _, body = views.submit_once(
            request, data, thread_id, self.default_strategy, status_code=201, thread=thread
        )
        run = store.load_run(run_id=body["run_id"])
        if run is None:  # the run was purged since an idempotent replay's first answer
            raise ApiError(f"run not found: {body['run_id']}", code="run_not_found", status_code=404)
        probe = submit_probe(run.run_id, body["dispatch_id"])
        return PendingWait(run, probe=probe, timeout_s=timeout_s, extra={"dispatch_id": body["dispatch_id"]})


class RunJoinView(EdgeCheckedView):
    """Block until the run is done or waiting for a decision (200, the run); 202 after `timeout_s`."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "timeout_s",
                float,
                description=f"how long to wait (default {DEFAULT_WAIT_S:g}, at most {MAX_WAIT_S:g} s)",
            )
        ],
        responses={200: RunOut, 202: RunPendingOut, **errors(400, 404)},
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = run_or_404(request, run_id)
        timeout_s = _timeout_param(request)
        probe = run_probe(run_id)
        over, seen = probe()
        if over and seen is not None:
            return Response(answer_json(seen))
        return PendingWait(run, probe=probe, timeout_s=timeout_s, extra={})


def _timeout_param(request: Request) -> float:
    raw = request.query_params.get("timeout_s")
    if raw is None or raw.strip() == "":
        return DEFAULT_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        raise ApiError("timeout_s must be a number of seconds", code="invalid", field="timeout_s") from None
    if not value > 0:  # NaN too
        raise ApiError("timeout_s must be > 0", code="invalid", field="timeout_s")
    return min(value, MAX_WAIT_S)
