"""The synchronous client (`httpx.Client`); `AsyncClient` (async_client.py) has the same methods."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping
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
DEFAULT_TIMEOUT_S = 30.0
STREAM_READ_TIMEOUT_S = 60.0  # longer than the server's keep-alive interval (15 s by default)


def base_headers(token: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    auth = {"Authorization": f"Token {token}"} if token else {}
    return {"Accept": "application/json", **auth, **(headers or {})}


def api_url(base_url: str) -> str:
    """The server's root (http://host:port) with the API prefix."""
    root = base_url.rstrip("/")
    return root if root.endswith(calls.API_PREFIX) else root + calls.API_PREFIX


class Client:
    """`Client("http://127.0.0.1:8000", token)`: the run API, one method per route. An error answer
    raises `ApiError`; streams resume after a dropped connection (`StreamPolicy`)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_read_timeout_s: float = STREAM_READ_TIMEOUT_S,
        stream_policy: StreamPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._stream_timeout = httpx.Timeout(timeout_s, read=stream_read_timeout_s)
        self.stream_policy = stream_policy or StreamPolicy()
        self._http = httpx.Client(
            base_url=api_url(base_url),
            headers=base_headers(token, headers),
            timeout=timeout_s,
            transport=transport,
        )

    # --- plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _request(self, call: Call[Any], *, stream: bool) -> httpx.Request:
        timeout: httpx.Timeout | float = (
            self._stream_timeout if stream else (call.timeout_s or self._timeout_s)
        )
        return self._http.build_request(
            call.method, call.path, params=call.params, json=call.body, headers=call.headers, timeout=timeout
        )

    def _do(self, call: Call[T]) -> T:
        return call.read(self._http.send(self._request(call, stream=False)))

    def _open(self, call: Call[httpx.Response]) -> httpx.Response:
        """The streamed response (its body not read yet); an error answer is read and raised."""
        response = self._http.send(self._request(call, stream=True), stream=True)
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            raise error_of(response)
        return response

    # --- runs -------------------------------------------------------------------------------------

    def submit(self, thread_id: str, messages: Messages, **options: Unpack[SubmitOptions]) -> Submission:
        """A background run (POST threads/{id}/mailbox): queued behind the thread's work by default."""
        return self._do(calls.submit(thread_id, messages, RunOptions(**options)))

    def submit_stream(
        self, thread_id: str | None, messages: Messages, **options: Unpack[SubmitOptions]
    ) -> RunStream:
        """A foreground run (POST threads/{id}/runs, interrupts the thread by default; no thread id:
        POST runs, a new thread), its events streamed: the submit is sent now (its errors raise here);
        iterate the answer for the events."""
        response = self._open(calls.submit_stream(thread_id, messages, RunOptions(**options)))
        state = StreamState(header(response, "X-Run-Id"), None, self.stream_policy)
        return RunStream(self, state, response)

    def stream_events(self, run_id: str, *, last_event_id: str | None = None) -> RunStream:
        """The run's events after `last_event_id` (default: from its first) until its next run_finish."""
        return RunStream(self, StreamState(run_id, last_event_id, self.stream_policy), None)

    def wait(
        self,
        thread_id: str,
        messages: Messages,
        *,
        wait_timeout_s: float | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Run | PendingRun:
        """Submit and block until the run is done or waiting (the `Run`); a `PendingRun` on timeout."""
        return self._do(calls.wait(thread_id, messages, RunOptions(**options), wait_timeout_s))

    def join(self, run_id: str, *, timeout_s: float | None = None) -> Run | PendingRun:
        """Block until the run is done or waiting (the `Run`); a `PendingRun` after `timeout_s`."""
        return self._do(calls.join(run_id, timeout_s))

    def get_run(self, run_id: str) -> Run:
        return self._do(calls.get_run(run_id))

    def list_runs(
        self,
        *,
        thread_id: str | None = None,
        status: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Run]:
        return self._do(
            calls.list_runs(thread_id=thread_id, status=status, metadata=metadata, limit=limit, offset=offset)
        )

    def replay_run(self, run_id: str, from_step: str, *, thread_id: str | None = None) -> Replay:
        """Replay a run from one of its recorded steps: the steps before `from_step` come from its journal
        (`step_replayed`), `from_step` and every later step run anew, on a fork of its thread."""
        return self._do(calls.replay_run(run_id, from_step, thread_id))

    def cancel_run(self, run_id: str) -> Accepted:
        return self._do(calls.cancel_run(run_id))

    def cancel_thread(self, thread_id: str) -> Accepted:
        return self._do(calls.cancel_thread(thread_id))

    def decide_run(
        self, run_id: str, tool_call_id: str, action: DecisionAction = "resume", payload: Any = None
    ) -> Accepted:
        """A decision for a waiting run's tool call: `resume` (with `payload`) or `cancel`."""
        return self._do(calls.decide_run(run_id, tool_call_id, action, payload))

    def decide_thread(
        self, thread_id: str, tool_call_id: str, action: DecisionAction = "resume", payload: Any = None
    ) -> Accepted:
        return self._do(calls.decide_thread(thread_id, tool_call_id, action, payload))

    # --- threads ----------------------------------------------------------------------------------

    def create_thread(
        self,
        thread_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        title: str | None = None,
        if_exists: IfExists = "raise",
        inbox: InboxPolicy | None = None,
    ) -> Thread:
        """A new thread (`inbox`: its inbox policy, docs/inbox.md)."""
        return self._do(calls.create_thread(thread_id, metadata, title, if_exists, inbox))

    def get_thread(self, thread_id: str) -> Thread:
        return self._do(calls.get_thread(thread_id))

    def update_thread(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        title: str | None = UNSET,
        inbox: InboxPolicy | None = UNSET,
    ) -> Thread:
        """Merge `metadata` by top-level key (a key set to None is removed); set `title` (None clears) and
        `inbox`, the thread's inbox policy (None: back to the agent's or the project's default)."""
        return self._do(calls.update_thread(thread_id, metadata, title, inbox))

    def fork_thread(
        self, thread_id: str, *, at_run_id: str | None = None, new_thread_id: str | None = None
    ) -> Fork:
        """Fork a thread at one of its runs (default: the latest): a new, independent thread of yours."""
        return self._do(calls.fork_thread(thread_id, at_run_id, new_thread_id))

    def delete_thread(self, thread_id: str) -> ThreadDeleted:
        return self._do(calls.delete_thread(thread_id))

    def list_threads(self, *, limit: int | None = None, offset: int | None = None) -> Page[Thread]:
        return self._do(calls.list_threads(limit, offset))

    def search_threads(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        status: ThreadStatus | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Thread]:
        return self._do(calls.search_threads(metadata, status, limit, offset))

    def list_messages(
        self,
        thread_id: str,
        *,
        limit: int | None = None,
        offset: int | None = None,
        visibility: str | None = None,
    ) -> Page[Message]:
        return self._do(calls.list_messages(thread_id, limit, offset, visibility))

    # --- the inbox: messages, pause, schedules (docs/inbox.md) ------------------------------------

    def send_messages(
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
        return self._do(calls.send_messages(thread_id, messages, mode, agent_id, idempotency_key))

    def get_pause(self, thread_id: str) -> ThreadPause:
        """Whether a pause holds the thread, and which (its own, its agent's, everything's)."""
        return self._do(calls.get_pause(thread_id))

    def pause_thread(
        self, thread_id: str, *, interrupt: bool = False, reason: str | None = None
    ) -> ThreadPause:
        """Pause the thread: submits are still accepted and queued, nothing is claimed until
        `resume_thread`; `interrupt` also stops its active run."""
        return self._do(calls.pause_thread(thread_id, interrupt, reason))

    def resume_thread(self, thread_id: str) -> ThreadResume:
        """Lift the thread's own pause (not an operator's: ApiError 409 `paused_by_operator`)."""
        return self._do(calls.resume_thread(thread_id))

    def create_schedule(
        self, thread_id: str, messages: Messages, **options: Unpack[ScheduleOptions]
    ) -> ScheduleCreated:
        """A schedule on the thread: `cron` (5 fields, with an optional `timezone`) or `interval_s`; each
        firing submits `messages` as a background run (`if_busy`: skip, the default, or enqueue)."""
        return self._do(calls.create_schedule(thread_id, messages, options))

    def list_schedules(
        self, thread_id: str, *, limit: int | None = None, offset: int | None = None
    ) -> Page[Schedule]:
        return self._do(calls.list_schedules(thread_id, limit, offset))

    def get_schedule(self, schedule_id: str) -> Schedule:
        return self._do(calls.get_schedule(schedule_id))

    def update_schedule(
        self, schedule_id: str, *, messages: Messages | None = None, **changes: Unpack[ScheduleChanges]
    ) -> Schedule:
        """Change what is given (`enabled=False` pauses the schedule, `True` resumes it)."""
        return self._do(calls.update_schedule(schedule_id, messages, changes))

    def delete_schedule(self, schedule_id: str) -> Accepted:
        return self._do(calls.delete_schedule(schedule_id))


class RunStream:
    """A run's events, once, in order: an iterator (and a context manager that closes it). After a
    dropped connection it reconnects with `Last-Event-ID` (the last event it handed out) and goes on;
    it ends after the run's `run_finish` (the run is done or waiting for a decision). `last_event_id`
    resumes a later `stream_events`, e.g. the continuation of a run after its decision."""

    def __init__(self, client: Client, state: StreamState, response: httpx.Response | None) -> None:
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

    def __iter__(self) -> Iterator[Event]:
        return self._iterator

    def __next__(self) -> Event:
        return next(self._iterator)

    def __enter__(self) -> RunStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._iterator.close()
        self._drop_response()

    def _drop_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _events(self) -> Generator[Event, None, None]:
        state = self._state
        while not state.finished:
            try:
                if self._response is None:
                    self._response = self._client._open(state.resume_call())
                if self._response.status_code == 204:  # no events yet: queued (or long expired)
                    self._drop_response()
                    if self._client.get_run(str(state.run_id)).is_stopped:
                        return
                    time.sleep(state.policy.not_started_poll_s)
                    continue
                for line in self._response.iter_lines():
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
                self._drop_response()
                time.sleep(delay)
            finally:
                if state.finished:
                    self._drop_response()
