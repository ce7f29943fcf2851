"""The API's answers as typed, immutable values, and their parsing (shared by `Client` and `AsyncClient`).

Every model keeps the JSON it was read from in `raw`, so a field the server adds later is still there.
Times are timezone-aware `datetime`s (the API sends ISO-8601 UTC with milliseconds).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypedDict, TypeVar

T = TypeVar("T")

RunStatus = Literal["created", "running", "waiting", "done"]
ThreadStatus = Literal["idle", "busy", "waiting", "error"]
MultitaskStrategy = Literal["reject", "enqueue", "interrupt"]
DecisionAction = Literal["resume", "cancel"]
IfExists = Literal["raise", "do_nothing"]
InputMode = Literal["queue", "live_then_queue", "steer", "interrupt_then_queue", "resume_open_run", "auto"]
WhileRunning = Literal["steer", "queue", "interrupt"]
IfBusy = Literal["skip", "enqueue"]
STOPPED_STATUSES = frozenset({"done", "waiting"})  # a run that finished or suspended for a decision


class InputMessage(TypedDict):
    """A message to submit: `role` is user, assistant or system."""

    role: str
    content: str


class ParseError(ValueError):
    """The server's answer does not have the shape this client expects."""


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"expected an ISO-8601 time, got {value!r}")
    return datetime.fromisoformat(value)


def _required_time(value: Any) -> datetime:
    parsed = _time(value)
    if parsed is None:
        raise ParseError("expected an ISO-8601 time, got null")
    return parsed


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ParseError(f"expected a JSON object for {what}, got {type(value).__name__}")
    return value


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Termination:
    """Why a run ended or stopped: natural_end, cancelled, timeout, error, suspended, ..."""

    type: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class AttemptUsage:
    """One attempt's usage: `ended` "finished" (it wrote the run) or "lost" (it ended without a finish;
    known from the steps it recorded)."""

    dispatch_id: str
    attempt: int
    input_tokens: int
    output_tokens: int
    cost: float | None
    ended: str


@dataclass(frozen=True, slots=True)
class Usage:
    """What a run used: the sums over its attempts (tokens in and out, the cost its agent reported; None:
    none did), and each attempt's."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    attempts: tuple[AttemptUsage, ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _cost(value: Any) -> float | None:
    return None if value is None else float(value)


def parse_usage(data: Any) -> Usage:
    """A run's `usage` (absent from servers older than usage: zero)."""
    if data is None:
        return Usage()
    raw = _object(data, "usage")
    attempts = tuple(
        AttemptUsage(
            dispatch_id=str(a["dispatch_id"]),
            attempt=int(a["attempt"]),
            input_tokens=int(a.get("input_tokens") or 0),
            output_tokens=int(a.get("output_tokens") or 0),
            cost=_cost(a.get("cost")),
            ended=str(a.get("ended", "finished")),
        )
        for a in (_object(item, "an attempt's usage") for item in raw.get("attempts") or [])
    )
    return Usage(
        input_tokens=int(raw.get("input_tokens") or 0),
        output_tokens=int(raw.get("output_tokens") or 0),
        cost=_cost(raw.get("cost")),
        attempts=attempts,
    )


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    thread_id: str
    agent_id: str
    status: str
    termination: Termination | None
    final_output: str | None
    waiting: dict[str, Any] | None
    metadata: dict[str, Any]
    dispatch_id: str | None
    timeout_ms: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    raw: dict[str, Any] = field(repr=False, compare=False)
    usage: Usage = field(default_factory=Usage)

    @property
    def is_stopped(self) -> bool:
        """Done (any outcome) or waiting for a decision."""
        return self.status in STOPPED_STATUSES

    @property
    def pending_tool_call_ids(self) -> list[str]:
        """The tool calls a waiting run waits on (the ids a decision names)."""
        tickets = (self.waiting or {}).get("tickets") or []
        return [str(t["tool_call_id"]) for t in tickets if isinstance(t, dict) and t.get("tool_call_id")]


def parse_run(data: Any) -> Run:
    raw = _object(data, "a run")
    reason = raw.get("termination_reason")
    try:
        return Run(
            run_id=str(raw["run_id"]),
            thread_id=str(raw["thread_id"]),
            agent_id=str(raw["agent_id"]),
            status=str(raw["status"]),
            termination=None
            if reason is None
            else Termination(
                type=str(_object(reason, "termination_reason")["type"]), value=reason.get("value")
            ),
            final_output=_optional_str(raw.get("final_output")),
            waiting=None if raw.get("waiting") is None else _object(raw["waiting"], "waiting"),
            metadata=dict(raw.get("metadata") or {}),
            dispatch_id=_optional_str(raw.get("dispatch_id")),
            timeout_ms=None if raw.get("timeout_ms") is None else int(raw["timeout_ms"]),
            created_at=_required_time(raw["created_at"]),
            started_at=_time(raw.get("started_at")),
            finished_at=_time(raw.get("finished_at")),
            updated_at=_required_time(raw["updated_at"]),
            raw=raw,
            usage=parse_usage(raw.get("usage")),
        )
    except KeyError as exc:
        raise ParseError(f"a run without {exc.args[0]!r}") from None


@dataclass(frozen=True, slots=True)
class PendingRun:
    """A wait or join that ran out of time (202): the run has not finished or suspended yet."""

    run_id: str
    thread_id: str
    status: str
    detail: str
    dispatch_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_pending(data: Any) -> PendingRun:
    raw = _object(data, "a pending run")
    return PendingRun(
        run_id=str(raw["run_id"]),
        thread_id=str(raw["thread_id"]),
        status=str(raw["status"]),
        detail=str(raw.get("detail", "")),
        dispatch_id=_optional_str(raw.get("dispatch_id")),
        raw=raw,
    )


@dataclass(frozen=True, slots=True)
class Submission:
    """A submit's answer (201, or 202 for a thread's messages): the new (or resumed) run, its dispatch
    and the run's status then. When the thread's inbox decided (docs/inbox.md): `inbox` says what became
    of the messages (`coalesced` into `dispatch_id`, `steered` into the running `run_id`, `queued`) and
    `starts_at` when the dispatch becomes claimable; both None otherwise."""

    run_id: str
    thread_id: str
    dispatch_id: str
    status: str
    raw: dict[str, Any] = field(repr=False, compare=False)
    inbox: str | None = None
    starts_at: datetime | None = None


def parse_submission(data: Any) -> Submission:
    raw = _object(data, "a submit answer")
    return Submission(
        run_id=str(raw["run_id"]),
        thread_id=str(raw["thread_id"]),
        dispatch_id=str(raw["dispatch_id"]),
        status=str(raw["status"]),
        raw=raw,
        inbox=_optional_str(raw.get("inbox")),
        starts_at=_time(raw.get("starts_at")),
    )


class InboxPolicy(TypedDict, total=False):
    """A thread's inbox policy (docs/inbox.md): messages within `debounce_ms` of each other coalesce
    into one run, which starts at the latest `max_wait_ms` after the first; `while_running` says what a
    message does while a run is active."""

    debounce_ms: int
    max_wait_ms: int | None
    while_running: WhileRunning


@dataclass(frozen=True, slots=True)
class Pause:
    """A pause holding a thread: its own (`scope` thread), its agent's, or everything's."""

    scope: str
    key: str
    paused_by: str
    by_operator: bool
    reason: str
    since: datetime


@dataclass(frozen=True, slots=True)
class ThreadPause:
    """Whether a pause holds the thread, the pauses that do, and (after a pause with `interrupt`) the
    runs asked to stop."""

    thread_id: str
    paused: bool
    pauses: list[Pause]
    stopped_runs: list[str]
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_thread_pause(data: Any) -> ThreadPause:
    raw = _object(data, "a pause answer")
    return ThreadPause(
        thread_id=str(raw["thread_id"]),
        paused=bool(raw["paused"]),
        pauses=[
            Pause(
                scope=str(p["scope"]),
                key=str(p["key"]),
                paused_by=str(p["paused_by"]),
                by_operator=bool(p["by_operator"]),
                reason=str(p.get("reason") or ""),
                since=_required_time(p["since"]),
            )
            for p in raw.get("pauses") or []
        ],
        stopped_runs=[str(r) for r in raw.get("stopped_runs") or []],
        raw=raw,
    )


@dataclass(frozen=True, slots=True)
class ThreadResume:
    """`resumed`: whether the thread had a pause of its own; `paused`: whether one still holds it (its
    agent's, everything's)."""

    thread_id: str
    resumed: bool
    paused: bool
    rung_threads: int
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_thread_resume(data: Any) -> ThreadResume:
    raw = _object(data, "a resume answer")
    return ThreadResume(
        thread_id=str(raw["thread_id"]),
        resumed=bool(raw["resumed"]),
        paused=bool(raw["paused"]),
        rung_threads=int(raw.get("rung_threads") or 0),
        raw=raw,
    )


@dataclass(frozen=True, slots=True)
class Schedule:
    """A thread's schedule: a cron in a time zone or an interval, what each firing submits, and what
    the last firing did."""

    schedule_id: str
    thread_id: str
    cron: str | None
    timezone: str | None
    interval_s: int | None
    messages: list[dict[str, str]]
    metadata: dict[str, Any]
    agent_id: str | None
    if_busy: str
    enabled: bool
    next_run_at: datetime | None
    last_fired_at: datetime | None
    last_outcome: str
    last_run_id: str | None
    firings: int
    created_at: datetime
    updated_at: datetime
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_schedule(data: Any) -> Schedule:
    raw = _object(data, "a schedule")
    interval = raw.get("interval_s")
    return Schedule(
        schedule_id=str(raw["schedule_id"]),
        thread_id=str(raw["thread_id"]),
        cron=_optional_str(raw.get("cron")),
        timezone=_optional_str(raw.get("timezone")),
        interval_s=None if interval is None else int(interval),
        messages=[dict(m) for m in raw.get("messages") or []],
        metadata=dict(raw.get("metadata") or {}),
        agent_id=_optional_str(raw.get("agent_id")),
        if_busy=str(raw["if_busy"]),
        enabled=bool(raw["enabled"]),
        next_run_at=_time(raw.get("next_run_at")),
        last_fired_at=_time(raw.get("last_fired_at")),
        last_outcome=str(raw.get("last_outcome") or ""),
        last_run_id=_optional_str(raw.get("last_run_id")),
        firings=int(raw.get("firings") or 0),
        created_at=_required_time(raw["created_at"]),
        updated_at=_required_time(raw["updated_at"]),
        raw=raw,
    )


@dataclass(frozen=True, slots=True)
class ScheduleCreated:
    schedule_id: str
    next_run_at: datetime
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_schedule_created(data: Any) -> ScheduleCreated:
    raw = _object(data, "a created schedule")
    return ScheduleCreated(str(raw["schedule_id"]), _required_time(raw["next_run_at"]), raw)


@dataclass(frozen=True, slots=True)
class Thread:
    id: str
    title: str | None
    metadata: dict[str, Any]
    status: str
    open_run: Run | None
    active_run: Run | None
    latest_run_id: str | None
    message_count: int
    created_at: datetime
    updated_at: datetime
    raw: dict[str, Any] = field(repr=False, compare=False)
    inbox: dict[str, Any] | None = None  # the thread's own inbox policy; None: the defaults apply


def parse_thread(data: Any) -> Thread:
    raw = _object(data, "a thread")
    return Thread(
        id=str(raw["id"]),
        title=_optional_str(raw.get("title")),
        metadata=dict(raw.get("metadata") or {}),
        status=str(raw["status"]),
        open_run=None if raw.get("open_run") is None else parse_run(raw["open_run"]),
        active_run=None if raw.get("active_run") is None else parse_run(raw["active_run"]),
        latest_run_id=_optional_str(raw.get("latest_run_id")),
        message_count=int(raw.get("message_count") or 0),
        created_at=_required_time(raw["created_at"]),
        updated_at=_required_time(raw["updated_at"]),
        raw=raw,
        inbox=None if raw.get("inbox") is None else dict(raw["inbox"]),
    )


@dataclass(frozen=True, slots=True)
class Fork:
    """A fork's answer (201): the new thread and where it was forked from (`run_id` None: at no run)."""

    thread: Thread
    forked_from_thread_id: str
    forked_from_run_id: str | None
    message_count: int
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_fork(data: Any) -> Fork:
    raw = _object(data, "a fork answer")
    source = _object(raw.get("forked_from"), "forked_from")
    return Fork(
        thread=parse_thread(raw["thread"]),
        forked_from_thread_id=str(source["thread_id"]),
        forked_from_run_id=_optional_str(source.get("run_id")),
        message_count=int(raw.get("message_count") or 0),
        raw=raw,
    )


@dataclass(frozen=True, slots=True)
class Replay:
    """A replay's answer (201): the new run (on its fork), the run it replays and from which step, and
    how many steps its journal starts with (the source's steps before `from_step`)."""

    run_id: str
    thread_id: str
    dispatch_id: str
    status: str
    replay_of_run_id: str
    from_step: str
    forked_from_thread_id: str
    forked_from_run_id: str | None
    replayed_steps: int
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_replay(data: Any) -> Replay:
    raw = _object(data, "a replay answer")
    source, of = _object(raw.get("forked_from"), "forked_from"), _object(raw.get("replay_of"), "replay_of")
    return Replay(
        run_id=str(raw["run_id"]),
        thread_id=str(raw["thread_id"]),
        dispatch_id=str(raw["dispatch_id"]),
        status=str(raw["status"]),
        replay_of_run_id=str(of["run_id"]),
        from_step=str(of["from_step"]),
        forked_from_thread_id=str(source["thread_id"]),
        forked_from_run_id=_optional_str(source.get("run_id")),
        replayed_steps=int(raw.get("replayed_steps") or 0),
        raw=raw,
    )


@dataclass(frozen=True, slots=True)
class ThreadDeleted:
    thread_id: str
    deleted: dict[str, int]
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_thread_deleted(data: Any) -> ThreadDeleted:
    raw = _object(data, "a delete answer")
    counts = _object(raw.get("deleted") or {}, "deleted")
    return ThreadDeleted(
        thread_id=str(raw["thread_id"]), deleted={str(k): int(v) for k, v in counts.items()}, raw=raw
    )


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    message_id: str
    role: str
    content: str
    visibility: str
    run_id: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    partial: bool
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_message(data: Any) -> Message:
    raw = _object(data, "a message")
    return Message(
        seq=int(raw["seq"]),
        message_id=str(raw["message_id"]),
        role=str(raw["role"]),
        content=str(raw.get("content") or ""),
        visibility=str(raw.get("visibility", "")),
        run_id=_optional_str(raw.get("run_id")),
        tool_calls=raw.get("tool_calls"),
        tool_call_id=_optional_str(raw.get("tool_call_id")),
        partial=bool(raw.get("partial")),
        created_at=_time(raw.get("created_at")),
        raw=raw,
    )


@dataclass(frozen=True, slots=True)
class Accepted:
    """A control request's answer (202): cancel_requested, decision_submitted, ..."""

    status: str
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_accepted(data: Any) -> Accepted:
    raw = _object(data, "an answer")
    return Accepted(status=str(raw.get("status", "")), raw=raw)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    has_more: bool


def parse_page(data: Any, item: Callable[[Any], T]) -> Page[T]:
    raw = _object(data, "a page")
    items = raw.get("items")
    if not isinstance(items, list):
        raise ParseError("a page without a list of items")
    return Page(items=[item(i) for i in items], total=int(raw["total"]), has_more=bool(raw["has_more"]))


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event of a run: its stream id (what `Last-Event-ID` resumes after), type, data."""

    id: str
    type: str
    data: Any

    @property
    def is_terminal(self) -> bool:
        """run_finish: the run is done (any outcome) or waiting; the server ends the stream after it."""
        return self.type == "run_finish"


def parse_event(fields: Mapping[str, str]) -> Event:
    data = fields.get("data", "")
    try:
        decoded: Any = json.loads(data) if data else None
    except ValueError:
        decoded = data
    return Event(id=fields.get("id", ""), type=fields.get("event", "message"), data=decoded)
