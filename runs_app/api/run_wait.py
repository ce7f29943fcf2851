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
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from asgiref.sync import sync_to_async
from django import db
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.storage import RunRecord
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
Probe = Callable[[], tuple[bool, RunRecord | None]]  # (over?, the run as read)


class PendingWait(Response):
    """A view's answer that `awaiting` completes: 200 with the run once `probe` says it is over, else
    this 202 (its `data`, with the run's status when the wait ended)."""

    def __init__(self, run: RunRecord, *, probe: Probe, timeout_s: float, extra: dict[str, Any]) -> None:
        super().__init__(_pending_body(run, timeout_s, extra), status=202)
        self.run_id, self.probe, self.timeout_s = run.run_id, probe, timeout_s

    def answer(self, run: RunRecord | None, over: bool) -> None:
        if run is not None and over:
            self.status_code, self.data = 200, s.run_json(run)
        elif run is not None:
            self.data = {**self.data, "status": run.status.value}


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
            over, run = await wait_until_over(response.run_id, response.probe, response.timeout_s)
        response.answer(run, over)
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


async def wait_until_over(run_id: str, probe: Probe, timeout_s: float) -> tuple[bool, RunRecord | None]:
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
    """Whether the feed hands over a `run_finish` within `timeout_s` (without a feed: False after
    sleeping that long); None when the feed fails."""
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
        if any(event.type in TERMINAL_EVENTS for event in batch):
            return True
    return False


async def _probe(probe: Probe) -> tuple[bool, RunRecord | None]:
    def read() -> tuple[bool, RunRecord | None]:
        try:
            return probe()
        finally:
            _release_connections()

    return await sync_to_async(read)()


def submit_probe(run_id: str, dispatch_id: str) -> Probe:
    """The submit's run is over once its dispatch has ended (not queued or claimed: a stream's earlier
    `run_finish`, of a waiting run this submit resumes, does not count) and the run stopped."""

    def probe() -> tuple[bool, RunRecord | None]:
        dispatch = mailbox.load_dispatch(dispatch_id)
        run = store.load_run(run_id=run_id)
        live = dispatch is not None and dispatch.status in {DispatchStatus.QUEUED, DispatchStatus.CLAIMED}
        return (run is not None and not live and run.status in STOPPED), run

    return probe


def run_probe(run_id: str) -> Probe:
    def probe() -> tuple[bool, RunRecord | None]:
        run = store.load_run(run_id=run_id)
        return (run is not None and run.status in STOPPED), run

    return probe


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
        if run.status in STOPPED:
            return Response(s.run_json(run))
        return PendingWait(run, probe=run_probe(run_id), timeout_s=timeout_s, extra={})


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
