"""History repair: what a run that ends early (cancelled, superseded, timed out, dead-lettered) leaves open
in the thread log is closed in the transaction that ends it.

A run reports its output as it goes (`text_delta`, `tool_call_start`, `tool_call_done`, `tool_call_resumed`
events); `RunTranscript` keeps that in the worker beside the run. When the run ends without a natural end,
`closing_messages` turns it — and the tool calls a waiting run holds as tickets — into the messages that
make the history well-formed for the next model call: one assistant message marked partial (the text so
far and the tool calls the run's own messages do not carry) and one tool result per call, the recorded
result for a call that finished, `{"status": "cancelled", "reason": …}` with internal visibility (sent to
the model, hidden from API consumers) for a call left open. Pure: nothing here is written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailbox_app.contract.message import ChatMessage, Role, ToolCall, Visibility
from mailbox_app.contract.storage import RunRecord

CANCELLED = "cancelled"
PARTIAL_KEY = "partial"
_CALL_FIELDS = frozenset({"tool_call_id", "id", "name", "tool_name", "arguments", "status", "result"})

# A run store's terminalize / cancel statements call this with the run as it is under their lock.
Closer = Callable[[RunRecord], list[ChatMessage]]


@dataclass
class _Call:
    id: str
    name: str
    arguments: dict[str, Any]
    done: bool = False
    result: Any = None


@dataclass
class RunTranscript:
    """The output one activation has emitted so far (thread-safe: the agent may emit from its threads)."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _text: list[str] = field(default_factory=list)
    _calls: dict[str, _Call] = field(default_factory=dict)

    def record(self, event_type: str, data: dict[str, Any]) -> None:
        with self._lock:
            if event_type == "text_delta":
                self._text.append(str(data.get("delta", "")))
            elif event_type == "tool_call_start":
                self._start(data)
            elif event_type in ("tool_call_done", "tool_call_resumed"):
                self._finish(event_type, data)

    def _start(self, data: dict[str, Any]) -> None:
        call_id = str(data.get("tool_call_id") or data.get("id") or "")
        if not call_id:
            return
        arguments = data.get("arguments")
        if not isinstance(arguments, dict):  # e.g. echo's `{"question": …}` beside the id and name
            arguments = {k: v for k, v in data.items() if k not in _CALL_FIELDS}
        name = str(data.get("name") or data.get("tool_name") or "tool")
        self._calls.setdefault(call_id, _Call(call_id, name, arguments))

    def _finish(self, event_type: str, data: dict[str, Any]) -> None:
        call = self._calls.get(str(data.get("tool_call_id") or ""))
        if call is None or (event_type == "tool_call_done" and data.get("status") == "suspended"):
            return  # a suspended call stays open: the decision (or a cancel) closes it
        call.done = True
        call.result = data.get("result", {"status": data.get("status") or data.get("action")})

    def text(self) -> str:
        with self._lock:
            return "".join(self._text)

    def calls(self) -> list[_Call]:
        with self._lock:
            return [_Call(c.id, c.name, dict(c.arguments), c.done, c.result) for c in self._calls.values()]


def closing_messages(
    *,
    run_id: str,
    reason: str,
    transcript: RunTranscript | None = None,
    waiting_run: RunRecord | None = None,
    produced: Sequence[ChatMessage] = (),
) -> list[ChatMessage]:
    """The messages that close what a run leaves open when it ends with `reason` (empty when nothing is
    open). `produced` are the messages the run returned itself (they are written beside these): calls
    they carry are not repeated, calls they answer are not answered again, and their text replaces the
    partial text. `waiting_run`'s tickets count as open calls (a suspended run cancelled while waiting)."""
    calls = transcript.calls() if transcript is not None else []
    known = {c.id for c in calls}
    if waiting_run is not None and waiting_run.waiting is not None:
        for ticket in waiting_run.waiting.tickets:
            if ticket.tool_call_id not in known:
                known.add(ticket.tool_call_id)
                calls.append(_Call(ticket.tool_call_id, ticket.tool_name, _arguments(ticket.arguments)))
    carried = [c.id for m in produced for c in (m.tool_calls or [])]
    answered = {m.tool_call_id for m in produced if m.role is Role.TOOL and m.tool_call_id}
    text = "" if any(m.role is Role.ASSISTANT for m in produced) or transcript is None else transcript.text()
    fresh = [c for c in calls if c.id not in carried]
    closing: list[ChatMessage] = []
    if text or fresh:
        closing.append(_partial_assistant(run_id, text, fresh))
    unanswered = [c for c in calls if c.id not in answered]
    unanswered += [_Call(i, "", {}) for i in dict.fromkeys(carried) if i not in known and i not in answered]
    closing += [_tool_result(run_id, c, reason) for c in unanswered]
    return closing


def closer(reason: str, transcript: RunTranscript | None = None) -> Closer:
    """A `Closer` for a run store statement that ends a run: the transcript's output and, when the run is
    waiting under the statement's lock, its tickets, closed with `reason`."""

    def close(run: RunRecord) -> list[ChatMessage]:
        waiting = run if run.waiting is not None else None
        return closing_messages(run_id=run.run_id, reason=reason, transcript=transcript, waiting_run=waiting)

    return close


def open_tool_calls(messages: Sequence[ChatMessage]) -> list[str]:
    """Ids of tool calls in `messages` that no later tool message answers (what a model API rejects)."""
    answered = {m.tool_call_id for m in messages if m.role is Role.TOOL}
    return [c.id for m in messages for c in (m.tool_calls or []) if c.id not in answered]


def is_partial(message: ChatMessage) -> bool:
    return bool((message.metadata or {}).get(PARTIAL_KEY))


def _arguments(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {} if value is None else {"value": value}


def _partial_assistant(run_id: str, text: str, calls: list[_Call]) -> ChatMessage:
    return ChatMessage(
        role=Role.ASSISTANT,
        content=[{"type": "text", "text": text}] if text else [],
        tool_calls=[ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in calls] or None,
        metadata={"run_id": run_id, PARTIAL_KEY: True},
    )


def _tool_result(run_id: str, call: _Call, reason: str) -> ChatMessage:
    if call.done:
        body, visibility = call.result, Visibility.ALL
    else:
        body, visibility = {"status": CANCELLED, "reason": reason}, Visibility.INTERNAL
    text = body if isinstance(body, str) else json.dumps(body)
    return ChatMessage(
        role=Role.TOOL,
        content=[{"type": "text", "text": text}],
        tool_call_id=call.id,
        visibility=visibility,
        metadata={"run_id": run_id},
    )
