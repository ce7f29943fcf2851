"""The built-in scripted agent (`echo`, the default), driven by the text of the last user message.

  any text            -> reply "echo: <text>", streamed word by word
  sleep <seconds>     -> works that long (checking cancellation every 50 ms), then replies
  fail transient      -> raises InferenceFailed (retried)
  fail permanent      -> raises ResolveFailed (dead-lettered)
  ask <question>      -> tool call `approve` that suspends the run until a decision:
                         resume -> "approved: <payload json>", cancel -> "denied" (the decision is
                         recorded as the call's step: a re-run after a crash acts on the same one)
  steps <n>           -> n journaled steps of one second each (`RunContext.step`); each step body
                         appends one real execution to a side-effect log outside the journal (a Redis
                         list per run), and the reply is "steps done: <n> steps, <k> executions" with k
                         counted from that log (this dispatch's entries): k == n unless a crash landed
                         inside a step body, or the run replays the first steps of another run
Steering messages received while running are appended as " | steered: <text>".

Usage: words count as tokens. A reply reports the words of the user's text as input tokens and the
words of the reply as output tokens (`RunResult.usage`); each step of `steps <n>` reports 1 input and
1 output token (`StepOutput.usage`), counted only by the attempt that executes it.

Step keys are stable across attempts and replays: `steps:<message id>:<i>`, the id of the user message
that asked for the steps. Every attempt of a turn reads the same message (a re-run replays the recorded
steps), a later turn of the run is another message (its own steps), and a replay of the run carries
that message under its id into its fork (runs_app/services/fork.py), so `from_step` names the same step
there (docs/replay-and-budgets.md).
"""

from __future__ import annotations

import json
import time

from mailbox_app.agents.base import (
    InferenceFailed,
    ResolveFailed,
    RunContext,
    RunResult,
    StepOutput,
    request_decision,
    resume_tool_call,
)
from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.message import ChatMessage, Role
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import TerminationReason
from mailbox_app.contract.suspension import RunWaitingState, ToolCallResume, WaitingTicket
from mailbox_app.contract.usage import Usage
from mailbox_app.realtime.redis_client import get_redis

CANCEL_POLL_S = 0.05
CANCELLED = TerminationReason(type="cancelled")
STEP_SECONDS = 1.0
MAX_STEPS = 100
STEPS_LOG_TTL_S = 24 * 3600
STEP_USAGE = Usage(input_tokens=1, output_tokens=1)


class _StepCancelled(Exception):
    """The run was cancelled inside a step body: the step is left unrecorded."""


def steps_log_key(run_id: str) -> str:
    """The side-effect log of `steps <n>`: one JSON entry per real execution of a step body."""
    return f"echo:steps:{run_id}"


class EchoAgent:
    def __init__(self) -> None:
        self._input_words = 0  # the words of the text this run was asked (its input tokens)

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        if request.decisions:
            call_id, decision = request.decisions[-1]
            return self._resume(decision, context, call_id=call_id)
        asked = _last_user(request.messages or context.thread_messages())
        text = "" if asked is None else asked.text.strip()
        self._input_words = _words(text)
        command, _, rest = text.partition(" ")
        if command == "fail":
            if rest.strip() == "permanent":
                raise ResolveFailed("echo: scripted permanent failure")
            raise InferenceFailed("echo: scripted transient failure")
        if command == "sleep":
            return self._sleep(rest, context)
        if command == "ask":
            return self._ask(rest, context)
        if command == "steps":
            turn = (asked.id if asked is not None else None) or context.dispatch_id
            return self._steps(rest, turn, request.session_id or "", context)
        return self._reply(f"echo: {text}", context)

    def _reply(self, text: str, context: RunContext) -> RunResult:
        steered = [m.text for m in context.take_steering()]
        reply = text + "".join(f" | steered: {s}" for s in steered)
        words = reply.split(" ")
        for i, word in enumerate(words):
            context.emit("text_delta", {"delta": word if i == 0 else " " + word})
        usage = Usage(input_tokens=self._input_words, output_tokens=_words(reply))
        return RunResult(final_output=reply, messages=(ChatMessage.assistant(reply),), usage=usage)

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

    def _steps(self, arg: str, turn: str, session_id: str, context: RunContext) -> RunResult:
        try:
            count = int(arg.strip())
        except ValueError:
            count = -1
        if not 0 <= count <= MAX_STEPS:
            return self._reply(f"echo: steps {arg}", context)
        log_key = steps_log_key(context.run_id)
        for index in range(1, count + 1):
            # keyed by the message that asked: the same in every attempt and in a replay of the run; a
            # later turn of the run (another message) runs its own steps
            key = step_key(turn, index)
            try:
                context.step(key, _one_step, context, log_key, session_id, index)
            except _StepCancelled:
                return RunResult(termination=CANCELLED)
        executions = sum(
            json.loads(raw)["dispatch_id"] == context.dispatch_id
            for raw in get_redis().lrange(log_key, 0, -1)
        )
        return self._reply(f"steps done: {count} steps, {executions} executions", context)

    def _ask(self, question: str, context: RunContext) -> RunResult:
        # the same id in every attempt of this dispatch, so a re-run asks for (and resumes) the same call
        call_id = f"call-{context.dispatch_id}"
        context.emit("tool_call_start", {"tool_call_id": call_id, "name": "approve", "question": question})
        # the approval request goes out now; the run holds its claim for a live decision meanwhile
        hold_s = float(awaken_settings.LIVE_SUSPEND_HOLD_MS) / 1000
        decision = request_decision(context, call_id, "approve", {"question": question}, hold_s=hold_s)
        if decision is not None:
            return self._resume(decision, context, call_id=call_id)
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

    def _resume(self, decision: ToolCallResume, context: RunContext, *, call_id: str) -> RunResult:
        decision = resume_tool_call(context, call_id, decision)
        context.emit("tool_call_resumed", {"tool_call_id": call_id, "action": decision.action})
        if decision.action == "resume":
            return self._reply(f"approved: {json.dumps(decision.result)}", context)
        return self._reply("denied", context)


def step_key(turn: str, index: int) -> str:
    """The journal key of step `index` (1-based) of `steps <n>` asked by the message `turn`."""
    return f"steps:{turn}:{index}"


def _one_step(
    idempotency_key: str, context: RunContext, log_key: str, session_id: str, index: int
) -> StepOutput:
    """One step of `steps <n>`: a second of work, then one real execution appended to the side-effect log;
    its result is the step's index, its usage one token in and one out."""
    if context.wait_cancelled(STEP_SECONDS):
        raise _StepCancelled
    entry = {
        "dispatch_id": context.dispatch_id,
        "session_id": session_id,
        "step": index,
        "key": idempotency_key,
    }
    pipe = get_redis().pipeline(transaction=False)
    pipe.rpush(log_key, json.dumps(entry))
    pipe.expire(log_key, STEPS_LOG_TTL_S)
    pipe.execute()
    return StepOutput(result=index, usage=STEP_USAGE)


def _last_user(messages: list[ChatMessage]) -> ChatMessage | None:
    for message in reversed(messages):
        if message.role is Role.USER:
            return message
    return None


def _words(text: str) -> int:
    return len(text.split())
