"""The built-in scripted agent (`echo`, the default), driven by the text of the last user message.

  any text            -> reply "echo: <text>", streamed word by word
  sleep <seconds>     -> works that long (checking cancellation every 50 ms), then replies
  fail transient      -> raises InferenceFailed (retried)
  fail permanent      -> raises ResolveFailed (dead-lettered)
  ask <question>      -> tool call `approve` that suspends the run until a decision:
                         resume -> "approved: <payload json>", cancel -> "denied"
Steering messages received while running are appended as " | steered: <text>".
"""

from __future__ import annotations

import json
import time

from django.conf import settings

from mailbox_app.executor import InferenceFailed, ResolveFailed, RunContext, RunResult
from mailbox_app.ids import now_ms, uuid7
from mailbox_app.payloads import (
    ChatMessage,
    Role,
    RunWaitingState,
    TerminationReason,
    ToolCallResume,
    WaitingTicket,
)
from mailbox_app.requests import RunRequest

CANCEL_POLL_S = 0.05
CANCELLED = TerminationReason(type="cancelled")


class EchoAgent:
    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        if request.decisions:
            return self._resume(request.decisions[-1][1], context)
        text = _last_user_text(request.messages or context.thread_messages())
        command, _, rest = text.partition(" ")
        if command == "fail":
            if rest.strip() == "permanent":
                raise ResolveFailed("echo: scripted permanent failure")
            raise InferenceFailed("echo: scripted transient failure")
        if command == "sleep":
            return self._sleep(rest, context)
        if command == "ask":
            return self._ask(rest, context)
        return self._reply(f"echo: {text}", context)

    def _reply(self, text: str, context: RunContext) -> RunResult:
        steered = [m.text for m in context.take_steering()]
        reply = text + "".join(f" | steered: {s}" for s in steered)
        words = reply.split(" ")
        for i, word in enumerate(words):
            context.emit("text_delta", {"delta": word if i == 0 else " " + word})
        return RunResult(final_output=reply, messages=(ChatMessage.assistant(reply),))

    def _sleep(self, arg: str, context: RunContext) -> RunResult:
        try:
            seconds = float(arg.strip())
        except ValueError:
            return self._reply(f"echo: sleep {arg}", context)
        deadline = time.monotonic() + max(seconds, 0.0)
        while (left := deadline - time.monotonic()) > 0:
            if context.wait_cancelled(min(CANCEL_POLL_S, left)):
                return RunResult(termination=CANCELLED)
        return self._reply(f"slept {arg.strip()}", context)

    def _ask(self, question: str, context: RunContext) -> RunResult:
        call_id = f"call-{uuid7()}"
        context.emit("tool_call_start", {"tool_call_id": call_id, "name": "approve", "question": question})
        hold_s = float(getattr(settings, "AWAKEN_LIVE_SUSPEND_HOLD_MS", 0)) / 1000
        decision = None
        if hold_s > 0:
            context.set_suspended(True)
            decision = context.wait_decision(call_id, hold_s)
            context.set_suspended(False)
        if decision is not None:
            return self._resume(decision, context, call_id=call_id)
        context.emit("tool_call_done", {"tool_call_id": call_id, "status": "suspended"})
        ticket = WaitingTicket(
            ticket_id=call_id,
            tool_call_id=call_id,
            tool_name="approve",
            arguments={"question": question},
            updated_at=now_ms(),
        )
        return RunResult(
            termination=TerminationReason(type="suspended"),
            waiting=RunWaitingState(
                reason="tool_permission",
                ticket_ids=[call_id],
                tickets=[ticket],
                since_dispatch_id=context.dispatch_id,
                message=question,
            ),
        )

    def _resume(self, decision: ToolCallResume, context: RunContext, *, call_id: str = "") -> RunResult:
        context.emit("tool_call_resumed", {"tool_call_id": call_id, "action": decision.action})
        if decision.action == "resume":
            return self._reply(f"approved: {json.dumps(decision.result)}", context)
        return self._reply("denied", context)


def _last_user_text(messages: list[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role is Role.USER:
            return message.text.strip()
    return ""
