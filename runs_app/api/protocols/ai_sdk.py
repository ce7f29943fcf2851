"""The Vercel AI SDK's UI message stream (protocol v1: `x-vercel-ai-ui-message-stream: v1`), as read by
`useChat`'s `DefaultChatTransport` and by `readUIMessageStream`.

One run is one assistant message (`messageId` = the run id, so a stream that continues a run after a
decision continues the same message):

  run_start                       -> start {messageId, messageMetadata: run, thread, dispatch}
  text_delta                      -> text-start (first delta of a part), text-delta
  tool_call_start                 -> text-end (of the open part), tool-input-start, tool-input-delta
                                     (the arguments as JSON), tool-input-available
  tool_call_done suspended        -> tool-approval-request (approvalId = the tool call id)
  tool_call_done succeeded/failed -> tool-output-available / tool-output-error
  tool_call_resumed               -> tool-output-available (resume) / tool-output-denied (cancel)
  steering_received               -> data-steering {message_id, text} (a part of the message)
  run_retry                       -> text-end, data-retry {attempt, retry_at, error}
  run_finish                      -> done: finish (stop); waiting: finish (tool-calls);
                                     cancelled: abort, finish (other); error: error, finish (error);
                                     the finish's messageMetadata carries status and termination
  anything else                   -> data-run-event {type, data}, transient (onData only)
  end of stream                   -> data: [DONE]

No steps (`start-step`) are sent: a continuation after a decision then finds the suspended tool part
in the message it continues. A stream that continues a run declares the resumed tool call again
(`tool-input-available`) so a client that did not see the first part of the run can read it too.
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
    translated,
)

NAME = "ai-sdk"
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
DONE = "data: [DONE]\n\n"
FINISH_REASONS = {"done": "stop", "suspended": "tool-calls", "cancelled": "other", "error": "error"}


class AiSdkEncoder(EventEncoder):
    def trailer(self) -> list[str]:
        return [DONE]

    def stream_error(self, message: str) -> list[Chunk]:
        return [{"type": "error", "errorText": message}]

    def resync(self) -> list[Chunk]:
        out = self._start() if self.is_open else []
        if self.text_id is not None:
            out.append({"type": "text-start", "id": self.text_id})
        return out

    def on_run_start(self, event: RunEvent) -> list[Chunk]:
        if self.is_open:  # the next attempt after a retry: the same message goes on
            return []
        self.is_open = True
        return self._start(event.data.get("dispatch_id"))

    def on_text_delta(self, event: RunEvent) -> list[Chunk]:
        delta = str(event.data.get("delta") or "")
        if not delta:
            return []
        out = self._open_if_needed()
        if self.text_id is None:
            self.text_id = f"text-{event.id}"
            out.append({"type": "text-start", "id": self.text_id})
        out.append({"type": "text-delta", "id": self.text_id, "delta": delta})
        return out

    def on_tool_call_start(self, event: RunEvent) -> list[Chunk]:
        out = self._open_if_needed() + self._end_text()
        call_id = self.remember_tool(event.data)
        name, arguments = self.tools[call_id]
        return [
            *out,
            {"type": "tool-input-start", "toolCallId": call_id, "toolName": name},
            {"type": "tool-input-delta", "toolCallId": call_id, "inputTextDelta": json.dumps(arguments)},
            self._input_available(call_id),
        ]

    def on_tool_call_done(self, event: RunEvent) -> list[Chunk]:
        call_id = str(event.data.get("tool_call_id") or "")
        if call_id not in self.tools:
            return self.on_other(event)
        out = self._declare(call_id)
        status = str(event.data.get("status") or "")
        if status == "suspended":
            self.suspended.append(call_id)
            out.append({"type": "tool-approval-request", "approvalId": call_id, "toolCallId": call_id})
        elif status in TOOL_SUCCESS:
            out.append({"type": "tool-output-available", "toolCallId": call_id, "output": _result(event)})
        else:
            reason = event.data.get("error") or event.data.get("reason") or status or "tool call failed"
            out.append({"type": "tool-output-error", "toolCallId": call_id, "errorText": str(reason)})
        return out

    def on_tool_call_resumed(self, event: RunEvent) -> list[Chunk]:
        call_id = self.resumed_call(event.data)
        if call_id is None:
            return self.on_other(event)
        out = self._open_if_needed() + self._end_text() + self._declare(call_id)
        if event.data.get("action") == "cancel":
            return [*out, {"type": "tool-output-denied", "toolCallId": call_id}]
        return [*out, {"type": "tool-output-available", "toolCallId": call_id, "output": _result(event)}]

    def on_steering_received(self, event: RunEvent) -> list[Chunk]:
        message_id = str(event.data.get("message_id") or event.id)
        part = {"type": "data-steering", "id": message_id, "data": event.data}
        return [*self._open_if_needed(), part]

    def on_run_retry(self, event: RunEvent) -> list[Chunk]:
        part = {"type": "data-retry", "id": f"retry-{event.id}", "data": event.data}
        return [*self._open_if_needed(), *self._end_text(), part]

    def on_run_finish(self, event: RunEvent) -> list[Chunk]:
        out = self._open_if_needed() + self._end_text()
        self.is_open = False
        kind = finish_kind(event.data)
        if kind == "error":
            out.append({"type": "error", "errorText": error_text(event.data)})
        elif kind == "cancelled":
            out.append({"type": "abort", "reason": "cancelled"})
        metadata = {
            "run_id": self.run_id,
            "status": event.data.get("status"),
            "termination": event.data.get("termination"),
        }
        out.append({"type": "finish", "finishReason": FINISH_REASONS[kind], "messageMetadata": metadata})
        return out

    def on_other(self, event: RunEvent) -> list[Chunk]:
        return [
            {"type": "data-run-event", "data": {"type": event.type, "data": event.data}, "transient": True}
        ]

    def _start(self, dispatch_id: Any = None) -> list[Chunk]:
        metadata = {"run_id": self.run_id, "thread_id": self.thread_id}
        if dispatch_id:
            metadata["dispatch_id"] = str(dispatch_id)
        return [{"type": "start", "messageId": self.run_id, "messageMetadata": metadata}]

    def _open_if_needed(self) -> list[Chunk]:
        """A run whose stream lacks its run_start (ended before it started) still opens its message."""
        if self.is_open:
            return []
        self.is_open = True
        return self._start()

    def _end_text(self) -> list[Chunk]:
        if self.text_id is None:
            return []
        text_id, self.text_id = self.text_id, None
        return [{"type": "text-end", "id": text_id}]

    def _declare(self, call_id: str) -> list[Chunk]:
        if not self.live or call_id in self.declared:
            return []
        self.declared.add(call_id)
        return [self._input_available(call_id)]

    def _input_available(self, call_id: str) -> Chunk:
        name, arguments = self.tools[call_id]
        return {"type": "tool-input-available", "toolCallId": call_id, "toolName": name, "input": arguments}


def submit_body(body: Any) -> Any:
    """`useChat`'s request (`{id, messages: UIMessage[], trigger, messageId}`): the trailing user
    messages' text parts become this API's messages, the chat id the thread id. A body already in this
    API's shape passes unchanged."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not any(isinstance(m, dict) and "parts" in m for m in messages):
        return body
    return translated(body, new_user_messages(messages, _text_of), body.get("id"))


def _text_of(message: dict[str, Any]) -> str:
    parts = message.get("parts")
    if not isinstance(parts, list):
        return str(message.get("content") or "")
    return "".join(str(p.get("text") or "") for p in parts if isinstance(p, dict) and p.get("type") == "text")


def _result(event: RunEvent) -> Any:
    if "result" in event.data:
        return event.data["result"]
    return {k: v for k, v in event.data.items() if k != "tool_call_id"}
