"""The step journal of a run (`RunContext.step`): a step runs at most once per run and key.

A step is recorded by the attempt that completed it, in one statement fenced like every other attempt
write: the row is inserted only while the dispatch is `claimed` with this attempt's claim token in the
thread's current epoch (the dispatch row is share-locked, so a concurrent reclaim or supersede waits for
the insert and then fences the attempt out), and never over an existing row for the key. A worker
paused past its lease and resumed after the re-run therefore records and overwrites nothing.

The journal is read once per attempt, on its first step: a run that never calls `step` pays nothing.
A step that was started but not recorded (the worker died inside it) runs again in the next attempt;
the idempotency key handed to it (`<run_id>:<key>`) lets an external API make even that exactly once.

A step's usage (`StepOutput.usage`) is recorded with it. The attempt counts the usage of the steps it
executed (`executed_usage`), never of those it replayed; steps recorded by earlier attempts of the run
that ended without a finish are reported once, by the attempt that finishes (`unfinished_attempts`).
A replayed run's journal starts with copies of the replayed run's steps (`copied_from_run_id`,
runs_app/services/fork.py): they replay like any recorded step and were paid for by that run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from django.db import connection

from mailbox_app.agents.base import (
    Journal,
    PhaseError,
    RecordedStep,
    StepNotRecorded,
    StepOutput,
    StepResultNotJSON,
)
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.usage import AttemptUsage, Usage

P = ParamSpec("P")
T = TypeVar("T")

MAX_KEY_CHARS = 255
STEP_RECORDED = "step_recorded"
STEP_REPLAYED = "step_replayed"
_COLUMNS = ("key", "dispatch_id", "session_id", "attempt", "result", "messages", "state", "result_bytes",
            "recorded_at", "input_tokens", "output_tokens", "cost", "copied_from_run_id")  # fmt: skip

# jsonb read back as text whatever the connection's loaders: a JSON string result stays unambiguous
LOAD_JOURNAL = """
SELECT key, dispatch_id, session_id, attempt, result::text, messages::text, state::text, result_bytes,
       recorded_at, input_tokens, output_tokens, cost, copied_from_run_id
  FROM runs_step WHERE run_id = %(run_id)s ORDER BY id
"""

LOAD_STEP = """
SELECT key, dispatch_id, session_id, attempt, result::text, messages::text, state::text, result_bytes,
       recorded_at, input_tokens, output_tokens, cost, copied_from_run_id
  FROM runs_step WHERE run_id = %(run_id)s AND key = %(key)s
"""

# The dispatch fence (store/fenced.py) as a share-locked read (no new dispatch row version per step),
# the insert behind it; `fenced` tells a lost claim (raise) from a key already recorded (first writer wins).
RECORD_STEP = """
WITH fence AS (
    SELECT d.run_id, d.dispatch_id, d.attempt_count
      FROM mailbox_dispatch d JOIN mailbox_thread_epoch e ON e.thread_id = d.thread_id
     WHERE d.dispatch_id = %(dispatch_id)s AND d.run_id = %(run_id)s AND d.status = 'claimed'
       AND d.claim_token = %(token)s AND d.dispatch_epoch >= e.current_epoch
       FOR SHARE OF d
), ins AS (
    INSERT INTO runs_step (run_id, key, dispatch_id, session_id, attempt, result, messages, state,
                           result_bytes, recorded_at, input_tokens, output_tokens, cost)
    SELECT f.run_id, %(key)s, f.dispatch_id, %(session_id)s, f.attempt_count + 1, %(result)s::jsonb,
           %(messages)s::jsonb, %(state)s::jsonb, %(result_bytes)s, %(now)s, %(input_tokens)s,
           %(output_tokens)s, %(cost)s
      FROM fence f
    ON CONFLICT (run_id, key) DO NOTHING
    RETURNING key, dispatch_id, session_id, attempt, result::text, messages::text, state::text, result_bytes,
              recorded_at, input_tokens, output_tokens, cost, copied_from_run_id
)
SELECT EXISTS (SELECT 1 FROM fence), ins.* FROM (SELECT 1) AS one LEFT JOIN ins ON TRUE
"""

# Journals of runs that are done, finished before the GC horizon, with no dispatch left to re-run them.
PURGE_JOURNALS = """
DELETE FROM runs_step s USING runs_run r
 WHERE s.run_id = r.run_id AND r.status = 'done' AND r.finished_at < %(older_than)s
   AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch d
                    WHERE d.run_id = r.run_id AND d.status IN ('queued', 'claimed'))
"""


def idempotency_key(run_id: str, key: str) -> str:
    return f"{run_id}:{key}"


@dataclass(frozen=True, slots=True)
class _Encoded:
    result: str
    messages: str | None
    state: str | None
    usage: Usage | None = None


class StepJournal:
    """One attempt's view of its run's journal: read on the first step, then kept in memory.

    `emit` appends a run event (fenced by the attempt's thread lock); `lease_lost` is the attempt's
    flag: once set, no step body starts (the attempt could not record it anyway)."""

    def __init__(
        self,
        *,
        run_id: str,
        dispatch_id: str,
        claim_token: str,
        session_id: str,
        emit: Callable[[str, dict[str, Any]], None],
        lease_lost: threading.Event,
    ) -> None:
        self._run_id = run_id
        self._dispatch_id = dispatch_id
        self._claim_token = claim_token
        self._session_id = session_id
        self._emit = emit
        self._lease_lost = lease_lost
        self._lock = threading.Lock()
        self._steps: dict[str, RecordedStep] | None = None
        self._executed: list[Usage] = []  # the usage of each step this attempt executed and recorded

    def journal(self) -> Journal:
        return Journal(tuple(self._loaded().values()))

    def step(self, key: str, fn: Callable[Concatenate[str, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        _check_key(key)
        recorded = self._loaded().get(key)
        if recorded is not None:
            self._replayed(recorded)
            return cast(T, recorded.value())
        if self._lease_lost.is_set():
            raise StepNotRecorded(f"step {key!r}: the attempt lost its claim; the step was not run")
        encoded = _encode(key, fn(idempotency_key(self._run_id, key), *args, **kwargs))
        recorded, mine = self._record(key, encoded)
        if mine:
            if encoded.usage is not None:
                with self._lock:
                    self._executed.append(encoded.usage)
            self._emit(STEP_RECORDED, _event(recorded))
        else:
            self._replayed(recorded)
        return cast(T, recorded.value())

    def executed_usage(self) -> Usage:
        """What the steps this attempt executed (and recorded) reported: its steps' share of its usage."""
        with self._lock:
            return Usage.total(self._executed)

    def unfinished_attempts(self, known: set[tuple[str, int]]) -> list[AttemptUsage]:
        """The usage of steps recorded by attempts of this run not in `known` (the run's listed attempts
        and this one, as (dispatch_id, attempt)): attempts that ended without a finish (a crash, a lost
        lease, a retried failure). Empty when this attempt never read the journal (it ran no step)."""
        with self._lock:
            if self._steps is None:
                return []
            steps = list(self._steps.values())
        totals: dict[tuple[str, int], list[RecordedStep]] = {}
        for step in steps:
            ident = (step.dispatch_id, step.attempt)
            if step.copied_from_run_id is None and step.usage is not None and ident not in known:
                totals.setdefault(ident, []).append(step)
        return [
            AttemptUsage(
                dispatch_id=dispatch_id,
                attempt=attempt,
                ended="lost",
                recorded_at=max(s.recorded_at for s in recorded),
                **Usage.total(s.usage for s in recorded).model_dump(),
            )
            for (dispatch_id, attempt), recorded in totals.items()
        ]

    def _loaded(self) -> dict[str, RecordedStep]:
        with self._lock:
            if self._steps is None:
                with connection.cursor() as cursor:
                    cursor.execute(LOAD_JOURNAL, {"run_id": self._run_id})
                    self._steps = {step.key: step for step in map(_recorded, cursor.fetchall())}
            return self._steps

    def _record(self, key: str, encoded: _Encoded) -> tuple[RecordedStep, bool]:
        """Insert the step (one fenced statement, its own transaction in autocommit); `(step, False)`
        when the key was recorded first by someone else — its row is kept, never overwritten."""
        params = {
            "run_id": self._run_id,
            "dispatch_id": self._dispatch_id,
            "token": self._claim_token,
            "session_id": self._session_id,
            "key": key,
            "result": encoded.result,
            "messages": encoded.messages,
            "state": encoded.state,
            "result_bytes": len(encoded.result.encode()),
            "now": now_ms(),
            "input_tokens": 0 if encoded.usage is None else encoded.usage.input_tokens,
            "output_tokens": 0 if encoded.usage is None else encoded.usage.output_tokens,
            "cost": None if encoded.usage is None else encoded.usage.cost,
        }
        with connection.cursor() as cursor:
            cursor.execute(RECORD_STEP, params)
            row = cursor.fetchone()
            assert row is not None
            fenced, inserted = bool(row[0]), row[1] is not None
            if not fenced:
                raise StepNotRecorded(f"step {key!r}: the attempt lost its claim; nothing was recorded")
            if not inserted:
                cursor.execute(LOAD_STEP, {"run_id": self._run_id, "key": key})
                row = (None, *cursor.fetchone())  # type: ignore[misc]
        recorded = _recorded(row[1:])
        with self._lock:
            assert self._steps is not None
            recorded = self._steps.setdefault(key, recorded)
        return recorded, inserted

    def _replayed(self, recorded: RecordedStep) -> None:
        self._emit(STEP_REPLAYED, _event(recorded))


def purge_journals(older_than: int) -> int:
    """GC: delete the journals of runs done before `older_than` that nothing can re-run; returns rows."""
    with connection.cursor() as cursor:
        cursor.execute(PURGE_JOURNALS, {"older_than": older_than})
        return int(cursor.rowcount)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS:
        raise PhaseError(
            f"step key must be a non-empty string of at most {MAX_KEY_CHARS} characters: {key!r}"
        )


def _dumps(key: str, what: str, value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StepResultNotJSON(
            f"step {key!r}: its {what} is not JSON-serialisable ({exc}); nothing was recorded"
        ) from exc


def _encode(key: str, value: Any) -> _Encoded:
    if not isinstance(value, StepOutput):
        return _Encoded(_dumps(key, "result", value), None, None)
    messages = [_with_id(m).model_dump(mode="json") for m in value.messages]
    state = None if value.state is None else _dumps(key, "state", value.state)
    encoded = _Encoded(_dumps(key, "result", value.result), _dumps(key, "messages", messages), state)
    return encoded if value.usage is None else replace(encoded, usage=value.usage)


def _with_id(message: ChatMessage) -> ChatMessage:
    """Recorded messages carry ids, so a replayed step's messages land in the log once."""
    return message if message.id else message.model_copy(update={"id": uuid7()})


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _recorded(row: Sequence[Any]) -> RecordedStep:
    data = dict(zip(_COLUMNS, row, strict=True))
    messages = _json(data["messages"])
    usage = Usage(input_tokens=data["input_tokens"], output_tokens=data["output_tokens"], cost=data["cost"])
    return RecordedStep(
        key=data["key"],
        dispatch_id=data["dispatch_id"],
        session_id=data["session_id"],
        attempt=data["attempt"],
        result=_json(data["result"]),
        messages=None if messages is None else tuple(ChatMessage.model_validate(m) for m in messages),
        state=_json(data["state"]),
        result_bytes=data["result_bytes"],
        recorded_at=data["recorded_at"],
        usage=None if usage.is_zero else usage,
        copied_from_run_id=data["copied_from_run_id"],
    )


def _event(step: RecordedStep) -> dict[str, Any]:
    event: dict[str, Any] = {
        "key": step.key,
        "dispatch_id": step.dispatch_id,
        "attempt": step.attempt,
        "recorded_at": step.recorded_at,
        "result_bytes": step.result_bytes,
    }
    if step.usage is not None:
        event["usage"] = step.usage.model_dump()
    if step.copied_from_run_id is not None:  # a replayed run's step, recorded by the run it replays
        event["from_run_id"] = step.copied_from_run_id
    return event
