"""AG-UI events (https://docs.ag-ui.com), as read by `@ag-ui/client`'s `HttpAgent` and its verifier.

  run_start                       -> RUN_STARTED {threadId, runId} (the first attempt only)
  text_delta                      -> TEXT_MESSAGE_START (first delta of a message), TEXT_MESSAGE_CONTENT
  tool_call_start                 -> TEXT_MESSAGE_END (of the open message), TOOL_CALL_START (its parent
                                     is that message), TOOL_CALL_ARGS (the arguments as JSON), TOOL_CALL_END
  tool_call_done suspended        -> nothing yet: the run's finish names it as an interrupt
  tool_call_done succeeded/failed -> TOOL_CALL_RESULT (content: the result, or the error, as JSON)
  tool_call_resumed               -> TOOL_CALL_RESULT {"action": "resume" | "cancel", ...}
  steering_received               -> CUSTOM steering_received {message_id, text}
  run_retry                       -> TEXT_MESSAGE_END, CUSTOM run_retry {attempt, retry_at, error}
  run_finish                      -> done: RUN_FINISHED (outcome success, result = final output);
                                     waiting: RUN_FINISHED (outcome interrupt: one per suspended call);
                                     cancelled: RUN_FINISHED (outcome cancelled); error: RUN_ERROR
  anything else                   -> RAW {event: {type, data}, source: "awaken-mailbox"}

Each event carries `timestamp`: the milliseconds of its stream id. A run continued after a decision
is a new AG-UI run on the same run id (RUN_STARTED again), as AG-UI resumes an interrupt.
"""

from __future__ import annotations

import json
from typing import Any

from mailbox_app.realtime.events import RunEvent
from runs_app.api.protocols.framing import (
    TOOL_SUCCESS,
    Chunk,
    EventEncoder,
    error_text,
    finish_kind,
    new_user_messages,
    stream_position,
    translated,
)

NAME = "ag-ui"
HEADERS: dict[str, str] = {}
SOURCE = "awaken-mailbox"
NOT_RETAINED = "events_not_retained"


class AgUiEncoder(EventEncoder):
    def encode(self, event: RunEvent, *, live: bool) -> list[Chunk]:
        stamp = stream_position(event.id)[0]
        return [chunk | {"timestamp": stamp} for chunk in super().encode(event, live=live)]

    def stream_error(self, message: str) -> list[Chunk]:
        return [{"type": "RUN_ERROR", "message": message, "code": NOT_RETAINED}]

    def resync(self) -> list[Chunk]:
        out = [self._run_started()] if self.is_open else []
        if self.text_id is not None:
            out.append({"type": "TEXT_MESSAGE_START", "messageId": self.text_id, "role": "assistant"})
        return out

    def on_run_start(self, event: RunEvent) -> list[Chunk]:
        if self.is_open:  # the next attempt after a retry: the same AG-UI run goes on
            return []
        self.is_open = True
        return [self._run_started()]

    def on_text_delta(self, event: RunEvent) -> list[Chunk]:
        delta = str(event.data.get("delta") or "")
        if not delta:
            return []
        out = self._open_if_needed()
        if self.text_id is None:
            self.text_id = f"msg-{event.id}"
            out.append({"type": "TEXT_MESSAGE_START", "messageId": self.text_id, "role": "assistant"})
        out.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": self.text_id, "delta": delta})
        return out

    def on_tool_call_start(self, event: RunEvent) -> list[Chunk]:
        parent = self.text_id
        out = self._open_if_needed() + self._end_text()
        call_id = self.remember_tool(event.data)
        name, arguments = self.tools[call_id]
        start: Chunk = {"type": "TOOL_CALL_START", "toolCallId": call_id, "toolCallName": name}
        if parent is not None:
            start["parentMessageId"] = parent
        return [
            *out,
            start,
            {"type": "TOOL_CALL_ARGS", "toolCallId": call_id, "delta": json.dumps(arguments)},
            {"type": "TOOL_CALL_END", "toolCallId": call_id},
        ]

    def on_tool_call_done(self, event: RunEvent) -> list[Chunk]:
        call_id = str(event.data.get("tool_call_id") or "")
        if call_id not in self.tools:
            return self.on_other(event)
        status = str(event.data.get("status") or "")
        if status == "suspended":
            self.suspended.append(call_id)
            return []
        if status in TOOL_SUCCESS and "result" in event.data:
            content: Any = event.data["result"]
        else:
            content = {k: v for k, v in event.data.items() if k != "tool_call_id"}
        return [self._result(call_id, content)]

    def on_tool_call_resumed(self, event: RunEvent) -> list[Chunk]:
        call_id = self.resumed_call(event.data)
        if call_id is None:
            return self.on_other(event)
        content = {k: v for k, v in event.data.items() if k != "tool_call_id"}
        return [*self._open_if_needed(), *self._end_text(), self._result(call_id, content)]

    def on_steering_received(self, event: RunEvent) -> list[Chunk]:
        return [*self._open_if_needed(), {"type": "CUSTOM", "name": "steering_received", "value": event.data}]

    def on_run_retry(self, event: RunEvent) -> list[Chunk]:
        custom = {"type": "CUSTOM", "name": "run_retry", "value": event.data}
        return [*self._open_if_needed(), *self._end_text(), custom]

    def on_run_finish(self, event: RunEvent) -> list[Chunk]:
        out = self._open_if_needed() + self._end_text()
        self.is_open = False
        kind = finish_kind(event.data)
        if kind == "error":
            return [*out, {"type": "RUN_ERROR", "message": error_text(event.data), "code": "error"}]
        finished: Chunk = {"type": "RUN_FINISHED", "threadId": self.thread_id, "runId": self.run_id}
        if kind == "suspended":
            finished["outcome"] = {"type": "interrupt", "interrupts": self._interrupts()}
        elif kind == "cancelled":
            finished["outcome"] = {"type": "cancelled"}
        else:
            finished["outcome"] = {"type": "success"}
            finished["result"] = event.data.get("final_output")
        return [*out, finished]

    def on_other(self, event: RunEvent) -> list[Chunk]:
        return [{"type": "RAW", "event": {"type": event.type, "data": event.data}, "source": SOURCE}]

    def _run_started(self) -> Chunk:
        return {"type": "RUN_STARTED", "threadId": self.thread_id, "runId": self.run_id}

    def _open_if_needed(self) -> list[Chunk]:
        """A run whose stream lacks its run_start (ended before it started) still opens its run."""
        if self.is_open:
            return []
        self.is_open = True
        return [self._run_started()]

    def _end_text(self) -> list[Chunk]:
        if self.text_id is None:
            return []
        text_id, self.text_id = self.text_id, None
        return [{"type": "TEXT_MESSAGE_END", "messageId": text_id}]

    def _result(self, call_id: str, content: Any) -> Chunk:
        return {
            "type": "TOOL_CALL_RESULT",
            "messageId": f"result-{call_id}",
            "toolCallId": call_id,
            "content": content if isinstance(content, str) else json.dumps(content),
            "role": "tool",
        }

    def _interrupts(self) -> list[Chunk]:
        interrupts: list[Chunk] = []
        for call_id in self.suspended:
            interrupt: Chunk = {"id": call_id, "reason": "tool_call", "toolCallId": call_id}
            arguments = self.tools[call_id][1]
            if isinstance(arguments, dict) and isinstance(arguments.get("question"), str):
                interrupt["message"] = arguments["question"]
            interrupts.append(interrupt)
        return interrupts or [{"id": self.run_id, "reason": "waiting"}]


def submit_body(body: Any) -> Any:
    """A `RunAgentInput` (`{threadId, runId, messages, state, tools, context, forwardedProps}`): the
    trailing user messages (string content, or its text parts) become this API's messages, `threadId`
    the thread id. A body already in this API's shape passes unchanged."""
    if not isinstance(body, dict) or "threadId" not in body or not isinstance(body.get("messages"), list):
        return body
    return translated(body, new_user_messages(body["messages"], _text_of), body.get("threadId"))


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return str(content or "")
