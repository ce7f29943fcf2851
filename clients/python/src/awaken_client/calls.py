"""Every API call as data (method, path, query, body, how to read the answer), shared by `Client` and
`AsyncClient`: each of their methods builds its `Call` here and only sends it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

import httpx

from awaken_client.errors import check
from awaken_client.models import (
    Accepted,
    DecisionAction,
    Fork,
    IfBusy,
    IfExists,
    InboxPolicy,
    InputMessage,
    InputMode,
    Message,
    MultitaskStrategy,
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
    parse_accepted,
    parse_fork,
    parse_message,
    parse_page,
    parse_pending,
    parse_replay,
    parse_run,
    parse_schedule,
    parse_schedule_created,
    parse_submission,
    parse_thread,
    parse_thread_deleted,
    parse_thread_pause,
    parse_thread_resume,
)

T = TypeVar("T")
API_PREFIX = "/api/v1"
WAIT_MARGIN_S = 15.0  # a wait's HTTP read timeout: the server's own bound plus this
SERVER_DEFAULT_WAIT_S = 30.0
LAST_EVENT_ID = "Last-Event-ID"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "leave as it is" (PATCH title), distinct from None ("clear it")

Messages = str | Sequence[InputMessage] | Sequence[Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: dict[str, str] | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None  # None: the client's own


def _id(value: str) -> str:
    return quote(value, safe="")


def _json(response: httpx.Response) -> Any:
    return check(response).json()


def _reading(parse: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    return lambda response: parse(_json(response))


def _run_or_pending(response: httpx.Response) -> Run | PendingRun:
    data = _json(response)
    return parse_pending(data) if response.status_code == 202 else parse_run(data)


def messages_json(messages: Messages) -> list[dict[str, str]]:
    """A plain string is one user message."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class SubmitOptions(TypedDict, total=False):
    """The keyword arguments of every run submit (`submit`, `submit_stream`, `wait`); see `RunOptions`."""

    agent_id: str
    idempotency_key: str
    metadata: Mapping[str, Any]
    after_seconds: float
    timeout_s: float
    multitask_strategy: MultitaskStrategy
    priority: int
    webhook: str


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What every run submit takes besides its messages (each optional; None: the server's default):
    the agent, an idempotency key (a retry answers the first submit's answer), the run's `metadata`, a
    delayed start (`after_seconds`), each activation's time budget (`timeout_s`), what to do when the
    thread is busy (`multitask_strategy`), the dispatch's `priority` (0-255, lower first) and a
    `webhook` URL called when the run finishes or waits for a decision."""

    agent_id: str | None = None
    idempotency_key: str | None = None
    metadata: Mapping[str, Any] | None = None
    after_seconds: float | None = None
    timeout_s: float | None = None
    multitask_strategy: MultitaskStrategy | None = None
    priority: int | None = None
    webhook: str | None = None

    def body(self, messages: Messages) -> dict[str, Any]:
        return {
            "messages": messages_json(messages),
            **_drop_none(
                {
                    "agent_id": self.agent_id,
                    "idempotency_key": self.idempotency_key,
                    "metadata": None if self.metadata is None else dict(self.metadata),
                    "after_seconds": self.after_seconds,
                    "timeout_s": self.timeout_s,
                    "multitask_strategy": self.multitask_strategy,
                    "priority": self.priority,
                    "webhook": self.webhook,
                }
            ),
        }


# --- runs -----------------------------------------------------------------------------------------


def submit(thread_id: str, messages: Messages, options: RunOptions) -> Call[Submission]:
    """A background submit: POST threads/{id}/mailbox (queues behind the thread's work by default)."""
    return Call(
        "POST",
        f"/threads/{_id(thread_id)}/mailbox",
        _reading(parse_submission),
        body=options.body(messages),
    )


def submit_stream(thread_id: str | None, messages: Messages, options: RunOptions) -> Call[httpx.Response]:
    """A foreground submit streamed as SSE: POST threads/{id}/runs (interrupts the thread by default);
    without a thread id, POST runs (a new thread)."""
    return Call(
        "POST",
        "/runs" if thread_id is None else f"/threads/{_id(thread_id)}/runs",
        check,
        body={**options.body(messages), "stream": True},
        headers={"Accept": "text/event-stream"},
    )


def run_events(run_id: str, last_event_id: str | None) -> Call[httpx.Response]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers[LAST_EVENT_ID] = last_event_id
    return Call("GET", f"/runs/{_id(run_id)}/events", check, headers=headers)


def wait(
    thread_id: str, messages: Messages, options: RunOptions, wait_timeout_s: float | None
) -> Call[Run | PendingRun]:
    body = options.body(messages)
    if wait_timeout_s is not None:
        body["wait_timeout_s"] = wait_timeout_s
    return Call(
        "POST",
        f"/threads/{_id(thread_id)}/runs/wait",
        _run_or_pending,
        body=body,
        timeout_s=(wait_timeout_s or SERVER_DEFAULT_WAIT_S) + WAIT_MARGIN_S,
    )


def join(run_id: str, timeout_s: float | None) -> Call[Run | PendingRun]:
    return Call(
        "GET",
        f"/runs/{_id(run_id)}/join",
        _run_or_pending,
        params=None if timeout_s is None else {"timeout_s": repr(float(timeout_s))},
        timeout_s=(timeout_s or SERVER_DEFAULT_WAIT_S) + WAIT_MARGIN_S,
    )


def get_run(run_id: str) -> Call[Run]:
    return Call("GET", f"/runs/{_id(run_id)}", _reading(parse_run))


def list_runs(
    *,
    thread_id: str | None,
    status: str | None,
    metadata: Mapping[str, Any] | None,
    limit: int | None,
    offset: int | None,
) -> Call[Page[Run]]:
    params = _drop_none(
        {
            "thread_id": thread_id,
            "status": status,
            "metadata": None if metadata is None else json.dumps(dict(metadata)),
            "limit": None if limit is None else str(limit),
            "offset": None if offset is None else str(offset),
        }
    )
    return Call("GET", "/runs", _reading(lambda d: parse_page(d, parse_run)), params=params)


def replay_run(run_id: str, from_step: str, thread_id: str | None) -> Call[Replay]:
    """POST runs/{id}/replay: a new run on a fork of the run's thread (at the run before it, under
    `thread_id` or a new id) whose journal starts with the run's steps recorded before `from_step`."""
    body = _drop_none({"from_step": from_step, "thread_id": thread_id})
    return Call("POST", f"/runs/{_id(run_id)}/replay", _reading(parse_replay), body=body)


def cancel_run(run_id: str) -> Call[Accepted]:
    return Call("POST", f"/runs/{_id(run_id)}/cancel", _reading(parse_accepted))


def cancel_thread(thread_id: str) -> Call[Accepted]:
    return Call("POST", f"/threads/{_id(thread_id)}/cancel", _reading(parse_accepted))


def _decision_body(tool_call_id: str, action: DecisionAction, payload: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"tool_call_id": tool_call_id, "action": action}
    if payload is not None:
        body["payload"] = payload
    return body


def decide_run(run_id: str, tool_call_id: str, action: DecisionAction, payload: Any) -> Call[Accepted]:
    return Call(
        "POST",
        f"/runs/{_id(run_id)}/decision",
        _reading(parse_accepted),
        body=_decision_body(tool_call_id, action, payload),
    )


def decide_thread(thread_id: str, tool_call_id: str, action: DecisionAction, payload: Any) -> Call[Accepted]:
    return Call(
        "POST",
        f"/threads/{_id(thread_id)}/decision",
        _reading(parse_accepted),
        body=_decision_body(tool_call_id, action, payload),
    )


# --- threads --------------------------------------------------------------------------------------


def create_thread(
    thread_id: str | None,
    metadata: Mapping[str, Any] | None,
    title: str | None,
    if_exists: IfExists,
    inbox: InboxPolicy | None = None,
) -> Call[Thread]:
    body = _drop_none(
        {
            "thread_id": thread_id,
            "metadata": None if metadata is None else dict(metadata),
            "title": title,
            "if_exists": if_exists,
            "inbox": None if inbox is None else dict(inbox),
        }
    )
    return Call("POST", "/threads", _reading(parse_thread), body=body)


def get_thread(thread_id: str) -> Call[Thread]:
    return Call("GET", f"/threads/{_id(thread_id)}", _reading(parse_thread))


def update_thread(
    thread_id: str, metadata: Mapping[str, Any] | None, title: Any, inbox: Any = UNSET
) -> Call[Thread]:
    """`metadata` is merged by top-level key (a key set to None is removed); `title` None clears it;
    `inbox` None clears the thread's policy (the defaults apply)."""
    body: dict[str, Any] = {} if metadata is None else {"metadata": dict(metadata)}
    if title is not UNSET:
        body["title"] = title
    if inbox is not UNSET:
        body["inbox"] = None if inbox is None else dict(inbox)
    return Call("PATCH", f"/threads/{_id(thread_id)}", _reading(parse_thread), body=body)


def fork_thread(thread_id: str, at_run_id: str | None, new_thread_id: str | None) -> Call[Fork]:
    """POST threads/{id}/fork: a new thread holding the messages up to and including `at_run_id`'s
    output (default: the latest run's), under `new_thread_id` or a new id."""
    body = _drop_none({"at_run_id": at_run_id, "thread_id": new_thread_id})
    return Call("POST", f"/threads/{_id(thread_id)}/fork", _reading(parse_fork), body=body)


def delete_thread(thread_id: str) -> Call[ThreadDeleted]:
    return Call("DELETE", f"/threads/{_id(thread_id)}", _reading(parse_thread_deleted))


def list_threads(limit: int | None, offset: int | None) -> Call[Page[Thread]]:
    params = _drop_none(
        {"limit": None if limit is None else str(limit), "offset": None if offset is None else str(offset)}
    )
    return Call("GET", "/threads", _reading(lambda d: parse_page(d, parse_thread)), params=params)


def search_threads(
    metadata: Mapping[str, Any] | None, status: str | None, limit: int | None, offset: int | None
) -> Call[Page[Thread]]:
    body = _drop_none(
        {
            "metadata": None if metadata is None else dict(metadata),
            "status": status,
            "limit": limit,
            "offset": offset,
        }
    )
    return Call("POST", "/threads/search", _reading(lambda d: parse_page(d, parse_thread)), body=body)


def list_messages(
    thread_id: str, limit: int | None, offset: int | None, visibility: str | None
) -> Call[Page[Message]]:
    params = _drop_none(
        {
            "limit": None if limit is None else str(limit),
            "offset": None if offset is None else str(offset),
            "visibility": visibility,
        }
    )
    return Call(
        "GET",
        f"/threads/{_id(thread_id)}/messages",
        _reading(lambda d: parse_page(d, parse_message)),
        params=params,
    )


# --- the inbox: messages, pause, schedules (docs/inbox.md) ---------------------------------------------


def send_messages(
    thread_id: str,
    messages: Messages,
    mode: InputMode,
    agent_id: str | None,
    idempotency_key: str | None,
) -> Call[Submission]:
    """POST threads/{id}/messages (202): `auto` lets the thread's inbox policy decide."""
    body = {
        "messages": messages_json(messages),
        "mode": mode,
        **_drop_none({"agent_id": agent_id, "idempotency_key": idempotency_key}),
    }
    return Call("POST", f"/threads/{_id(thread_id)}/messages", _reading(parse_submission), body=body)


def get_pause(thread_id: str) -> Call[ThreadPause]:
    return Call("GET", f"/threads/{_id(thread_id)}/pause", _reading(parse_thread_pause))


def pause_thread(thread_id: str, interrupt: bool, reason: str | None) -> Call[ThreadPause]:
    body = {"interrupt": interrupt, **_drop_none({"reason": reason})}
    return Call("POST", f"/threads/{_id(thread_id)}/pause", _reading(parse_thread_pause), body=body)


def resume_thread(thread_id: str) -> Call[ThreadResume]:
    return Call("POST", f"/threads/{_id(thread_id)}/resume", _reading(parse_thread_resume))


class ScheduleOptions(TypedDict, total=False):
    """What a schedule takes besides its thread and messages: a `cron` (5 fields) with its `timezone`,
    or `interval_s`; the runs' `metadata` and `agent_id`; `if_busy`; `enabled`."""

    cron: str
    timezone: str
    interval_s: int
    metadata: Mapping[str, Any]
    agent_id: str
    if_busy: IfBusy
    enabled: bool


class ScheduleChanges(TypedDict, total=False):
    """What `update_schedule` may change (each optional; `agent_id` None clears it)."""

    cron: str
    timezone: str
    interval_s: int
    metadata: Mapping[str, Any]
    agent_id: str | None
    if_busy: IfBusy
    enabled: bool


def _schedule_body(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options given (as keyword arguments: only those present), as JSON."""
    return {name: dict(value) if name == "metadata" else value for name, value in options.items()}


def create_schedule(thread_id: str, messages: Messages, options: Mapping[str, Any]) -> Call[ScheduleCreated]:
    body = {"messages": messages_json(messages), **_schedule_body(options)}
    return Call("POST", f"/threads/{_id(thread_id)}/schedules", _reading(parse_schedule_created), body=body)


def list_schedules(thread_id: str, limit: int | None, offset: int | None) -> Call[Page[Schedule]]:
    params = _drop_none(
        {"limit": None if limit is None else str(limit), "offset": None if offset is None else str(offset)}
    )
    return Call(
        "GET",
        f"/threads/{_id(thread_id)}/schedules",
        _reading(lambda d: parse_page(d, parse_schedule)),
        params=params,
    )


def get_schedule(schedule_id: str) -> Call[Schedule]:
    return Call("GET", f"/schedules/{_id(schedule_id)}", _reading(parse_schedule))


def update_schedule(
    schedule_id: str, messages: Messages | None, options: Mapping[str, Any]
) -> Call[Schedule]:
    """PATCH: only what is given changes (`enabled=False` pauses the schedule; `agent_id=None` clears)."""
    body = _schedule_body(options)
    if messages is not None:
        body["messages"] = messages_json(messages)
    return Call("PATCH", f"/schedules/{_id(schedule_id)}", _reading(parse_schedule), body=body)


def delete_schedule(schedule_id: str) -> Call[Accepted]:
    return Call("DELETE", f"/schedules/{_id(schedule_id)}", _reading(parse_accepted))
