"""The asynchronous client (`httpx.AsyncClient`): `Client`'s methods, awaited; streams are async iterators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx

from awaken_client import calls
from awaken_client.calls import (
    UNSET,
    Call,
    Messages,
    RunOptions,
    ScheduleChanges,
    ScheduleOptions,
    SubmitOptions,
)
from awaken_client.client import DEFAULT_TIMEOUT_S, STREAM_READ_TIMEOUT_S, api_url, base_headers
from awaken_client.errors import error_of
from awaken_client.models import (
    Accepted,
    DecisionAction,
    Event,
    Fork,
    IfExists,
    InboxPolicy,
    InputMode,
    Message,
    Page,
    PendingRun,
    Replay,
    Run,
    Schedule,
    ScheduleCreated,
    Submission,
    Thread,
    ThreadDeleted,
    ThreadPause,
    ThreadResume,
    ThreadStatus,
)
from awaken_client.resume import CAUGHT, StreamPolicy, StreamState, header, is_drop

T = TypeVar("T")


class AsyncClient:
    """`AsyncClient("http://127.0.0.1:8000", token)`: `Client`'s methods as coroutines."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_read_timeout_s: float = STREAM_READ_TIMEOUT_S,
        stream_policy: StreamPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._stream_timeout = httpx.Timeout(timeout_s, read=stream_read_timeout_s)
        self.stream_policy = stream_policy or StreamPolicy()
        self._http = httpx.AsyncClient(
            base_url=api_url(base_url),
            headers=base_headers(token, headers),
            timeout=timeout_s,
            transport=transport,
        )

    # --- plumbing ---------------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _request(self, call: Call[Any], *, stream: bool) -> httpx.Request:
        timeout: httpx.Timeout | float = (
            self._stream_timeout if stream else (call.timeout_s or self._timeout_s)
        )
        return self._http.build_request(
            call.method, call.path, params=call.params, json=call.body, headers=call.headers, timeout=timeout
        )

    async def _do(self, call: Call[T]) -> T:
        return call.read(await self._http.send(self._request(call, stream=False)))

    async def _open(self, call: Call[httpx.Response]) -> httpx.Response:
        response = await self._http.send(self._request(call, stream=True), stream=True)
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise error_of(response)
        return response

    # --- runs -------------------------------------------------------------------------------------

    async def submit(
        self, thread_id: str, messages: Messages, **options: Unpack[SubmitOptions]
    ) -> Submission:
        return await self._do(calls.submit(thread_id, messages, RunOptions(**options)))

    async def submit_stream(
        self, thread_id: str | None, messages: Messages, **options: Unpack[SubmitOptions]
    ) -> AsyncRunStream:
        """Sends the foreground submit now; iterate (`async for`) the answer for the run's events."""
        response = await self._open(calls.submit_stream(thread_id, messages, RunOptions(**options)))
        state = StreamState(header(response, "X-Run-Id"), None, self.stream_policy)
        return AsyncRunStream(self, state, response)

    def stream_events(self, run_id: str, *, last_event_id: str | None = None) -> AsyncRunStream:
        """Connects on the first `async for` step."""
        return AsyncRunStream(self, StreamState(run_id, last_event_id, self.stream_policy), None)

    async def wait(
        self,
        thread_id: str,
        messages: Messages,
        *,
        wait_timeout_s: float | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Run | PendingRun:
        return await self._do(calls.wait(thread_id, messages, RunOptions(**options), wait_timeout_s))

    async def join(self, run_id: str, *, timeout_s: float | None = None) -> Run | PendingRun:
        return await self._do(calls.join(run_id, timeout_s))

    async def get_run(self, run_id: str) -> Run:
        return await self._do(calls.get_run(run_id))

    async def list_runs(
        self,
        *,
        thread_id: str | None = None,
        status: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Run]:
        return await self._do(
            calls.list_runs(thread_id=thread_id, status=status, metadata=metadata, limit=limit, offset=offset)
        )

    async def replay_run(self, run_id: str, from_step: str, *, thread_id: str | None = None) -> Replay:
        """Replay a run from one of its recorded steps: the steps before `from_step` come from its journal
        (`step_replayed`), `from_step` and every later step run anew, on a fork of its thread."""
        return await self._do(calls.replay_run(run_id, from_step, thread_id))

    async def cancel_run(self, run_id: str) -> Accepted:
        return await self._do(calls.cancel_run(run_id))

    async def cancel_thread(self, thread_id: str) -> Accepted:
        return await self._do(calls.cancel_thread(thread_id))

    async def decide_run(
        self, run_id: str, tool_call_id: str, action: DecisionAction = "resume", payload: Any = None
    ) -> Accepted:
        return await self._do(calls.decide_run(run_id, tool_call_id, action, payload))

    async def decide_thread(
        self, thread_id: str, tool_call_id: str, action: DecisionAction = "resume", payload: Any = None
    ) -> Accepted:
        return await self._do(calls.decide_thread(thread_id, tool_call_id, action, payload))

    # --- threads ----------------------------------------------------------------------------------

    async def create_thread(
        self,
        thread_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        title: str | None = None,
        if_exists: IfExists = "raise",
        inbox: InboxPolicy | None = None,
    ) -> Thread:
        """A new thread (`inbox`: its inbox policy, docs/inbox.md)."""
        return await self._do(calls.create_thread(thread_id, metadata, title, if_exists, inbox))

    async def get_thread(self, thread_id: str) -> Thread:
        return await self._do(calls.get_thread(thread_id))

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        title: str | None = UNSET,
        inbox: InboxPolicy | None = UNSET,
    ) -> Thread:
        """Merge `metadata` by top-level key (a key set to None is removed); set `title` (None clears) and
        `inbox`, the thread's inbox policy (None: back to the agent's or the project's default)."""
        return await self._do(calls.update_thread(thread_id, metadata, title, inbox))

    async def fork_thread(
        self, thread_id: str, *, at_run_id: str | None = None, new_thread_id: str | None = None
    ) -> Fork:
        """Fork a thread at one of its runs (default: the latest): a new, independent thread of yours."""
        return await self._do(calls.fork_thread(thread_id, at_run_id, new_thread_id))

    async def delete_thread(self, thread_id: str) -> ThreadDeleted:
        return await self._do(calls.delete_thread(thread_id))

    async def list_threads(self, *, limit: int | None = None, offset: int | None = None) -> Page[Thread]:
        return await self._do(calls.list_threads(limit, offset))

    async def search_threads(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        status: ThreadStatus | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Thread]:
        return await self._do(calls.search_threads(metadata, status, limit, offset))

    async def list_messages(
        self,
        thread_id: str,
        *,
        limit: int | None = None,
        offset: int | None = None,
        visibility: str | None = None,
    ) -> Page[Message]:
        return await self._do(calls.list_messages(thread_id, limit, offset, visibility))

    # --- the inbox: messages, pause, schedules (docs/inbox.md) ------------------------------------

    async def send_messages(
        self,
        thread_id: str,
        messages: Messages,
        *,
        mode: InputMode = "auto",
        agent_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Submission:
        """POST threads/{id}/messages: by default (`auto`) the thread's inbox policy decides — the
        answer's `inbox` says whether the messages were `coalesced` into a dispatch not yet claimed,
        `steered` into the running run, or `queued` as a new dispatch."""
        return await self._do(calls.send_messages(thread_id, messages, mode, agent_id, idempotency_key))

    async def get_pause(self, thread_id: str) -> ThreadPause:
        """Whether a pause holds the thread, and which (its own, its agent's, everything's)."""
        return await self._do(calls.get_pause(thread_id))

    async def pause_thread(
        self, thread_id: str, *, interrupt: bool = False, reason: str | None = None
    ) -> ThreadPause:
        """Pause the thread: submits are still accepted and queued, nothing is claimed until
        `resume_thread`; `interrupt` also stops its active run."""
        return await self._do(calls.pause_thread(thread_id, interrupt, reason))

    async def resume_thread(self, thread_id: str) -> ThreadResume:
        """Lift the thread's own pause (not an operator's: ApiError 409 `paused_by_operator`)."""
        return await self._do(calls.resume_thread(thread_id))

    async def create_schedule(
        self, thread_id: str, messages: Messages, **options: Unpack[ScheduleOptions]
    ) -> ScheduleCreated:
        """A schedule on the thread: `cron` (5 fields, with an optional `timezone`) or `interval_s`; each
        firing submits `messages` as a background run (`if_busy`: skip, the default, or enqueue)."""
        return await self._do(calls.create_schedule(thread_id, messages, options))

    async def list_schedules(
        self, thread_id: str, *, limit: int | None = None, offset: int | None = None
    ) -> Page[Schedule]:
        return await self._do(calls.list_schedules(thread_id, limit, offset))

    async def get_schedule(self, schedule_id: str) -> Schedule:
        return await self._do(calls.get_schedule(schedule_id))

    async def update_schedule(
        self, schedule_id: str, *, messages: Messages | None = None, **changes: Unpack[ScheduleChanges]
    ) -> Schedule:
        """Change what is given (`enabled=False` pauses the schedule, `True` resumes it)."""
        return await self._do(calls.update_schedule(schedule_id, messages, changes))

    async def delete_schedule(self, schedule_id: str) -> Accepted:
        return await self._do(calls.delete_schedule(schedule_id))


class AsyncRunStream:
    """`RunStream` as an async iterator (and async context manager): the same resume rules."""

    def __init__(self, client: AsyncClient, state: StreamState, response: httpx.Response | None) -> None:
        self._client, self._state, self._response = client, state, response
        self.thread_id = header(response, "X-Thread-Id")
        self.dispatch_id = header(response, "X-Dispatch-Id")
        self._iterator = self._events()

    @property
    def run_id(self) -> str | None:
        return self._state.run_id

    @property
    def last_event_id(self) -> str | None:
        return self._state.last_event_id

    @property
    def reconnects(self) -> int:
        return self._state.reconnects

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterator

    async def __anext__(self) -> Event:
        return await anext(self._iterator)

    async def __aenter__(self) -> AsyncRunStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._iterator.aclose()
        await self._drop_response()

    async def _drop_response(self) -> None:
        if self._response is not None:
            await self._response.aclose()
            self._response = None

    async def _events(self) -> AsyncGenerator[Event, None]:
        state = self._state
        while not state.finished:
            try:
                if self._response is None:
                    self._response = await self._client._open(state.resume_call())
                if self._response.status_code == 204:  # no events yet: queued (or long expired)
                    await self._drop_response()
                    if (await self._client.get_run(str(state.run_id))).is_stopped:
                        return
                    await asyncio.sleep(state.policy.not_started_poll_s)
                    continue
                async for line in self._response.aiter_lines():
                    event = state.decoder.feed(line)
                    if event is not None:
                        state.on_event(event)
                        yield event
                        if state.finished:
                            return
                raise httpx.RemoteProtocolError("the event stream ended before run_finish")
            except CAUGHT as exc:
                if not is_drop(exc):
                    raise
                delay = state.on_drop(exc)
                await self._drop_response()
                await asyncio.sleep(delay)
            finally:
                if state.finished:
                    await self._drop_response()
