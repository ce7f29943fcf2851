"""An attempt's fenced start and finish in one round trip each: `awaken_start` and `awaken_finish`
(attempt.sql, beside this module), what mailbox_app/worker/attempt.py's start and finish transactions
write through the run-store port, fused for the built-in run store (see this package's docstring)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connection

from mailbox_app.contract.mailbox import DispatchRecord, RunDispatchResult
from mailbox_app.contract.message import ChatMessage, MessageRecord
from mailbox_app.contract.storage import RunRecord
from mailbox_app.store.rows import record
from mailbox_app.store.runs_tables import message_row


@dataclass(frozen=True, slots=True)
class Lost:
    """The fenced update matched no row (or the run was no longer this attempt's): nothing was written."""


@dataclass(frozen=True, slots=True)
class Started:
    dispatch: DispatchRecord
    run: RunRecord
    messages: list[MessageRecord]  # the activation's input, in order


@dataclass(frozen=True, slots=True)
class NotStartable:
    """The dispatch was started but its run could not be (missing, on another thread, done)."""

    dispatch: DispatchRecord
    run: RunRecord | None


AWAKEN_START = "SELECT awaken_start(%(p)s::jsonb)"


def start(
    dispatch_id: str, claim_token: str, instance_id: str, consumer_id: str, now: int, *, lease_ms: int
) -> Started | NotStartable | Lost:
    """The fenced start (its own transaction: call it outside one)."""
    answer = _call(
        AWAKEN_START,
        {
            "dispatch_id": dispatch_id,
            "token": claim_token,
            "instance_id": instance_id,
            "consumer_id": consumer_id,
            "now": now,
            "lease_until": now + lease_ms,
        },
    )
    if answer["outcome"] == "lost":
        return Lost()
    dispatch = _dispatch(answer["dispatch"])
    if answer["outcome"] == "not_startable":
        return NotStartable(
            dispatch, None if answer["run"] is None else RunRecord.model_validate(answer["run"])
        )
    messages = [_message(row) for row in answer["messages"]]
    return Started(dispatch, RunRecord.model_validate(answer["run"]), messages)


@dataclass(frozen=True, slots=True)
class Settled:
    dispatch: DispatchRecord
    run: RunRecord | None  # the run's final record, when one was written
    delivery_id: str | None  # the webhook outbox row written with it, if a URL applies
    next_dispatch: DispatchRecord | None  # the worker's next claim
    owner_key: str | None = None  # the thread's owner, when asked for (`Finish.with_owner`)


@dataclass(frozen=True, slots=True)
class NextClaim:
    """What the finish claims next: `mode` "fair" (across threads) or "thread" (the same thread)."""

    mode: str
    token: str
    consumer_id: str
    lease_until: int
    unstarted_before: int
    limit: int
    budgets: dict[str, Any] | None = None  # the token budgets the claim applies (store/budgets.py)


@dataclass(frozen=True, slots=True)
class Finish:
    """The fenced finish's input: the settle (`outcome` ack / nack), the run's final record and the
    messages it produced (None for a nack that requeues: the run stays Running), the next claim."""

    dispatch_id: str
    claim_token: str
    instance_id: str
    outcome: str
    trace: RunDispatchResult
    now: int
    retry_at: int | None = None
    error: str | None = None
    run: RunRecord | None = None
    messages: list[ChatMessage] | None = None
    delivery_id: str = ""
    default_webhook_url: str = ""
    claim_next: NextClaim | None = None
    charge_tokens: int | None = None  # settle the claim's token-budget charges with this (None: off)
    with_owner: bool = False  # answer the thread's owner too (the usage metrics')


AWAKEN_FINISH = "SELECT awaken_finish(%(p)s::jsonb)"


def finish(finishing: Finish) -> Settled | Lost:
    """The fenced finish (its own transaction: call it outside one)."""
    try:
        answer = _call(AWAKEN_FINISH, _finish_payload(finishing))
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "AW409":  # the run moved on: nothing was written
            return Lost()
        raise
    if answer["outcome"] == "lost":
        return Lost()
    return Settled(
        dispatch=_dispatch(answer["dispatch"]),
        run=None if answer["run"] is None else RunRecord.model_validate(answer["run"]),
        delivery_id=answer["delivery_id"],
        next_dispatch=None if answer["next"] is None else _dispatch(answer["next"]),
        owner_key=answer.get("owner_key"),
    )


def _finish_payload(finishing: Finish) -> dict[str, Any]:
    trace, claim = finishing.trace, finishing.claim_next
    run = finishing.run
    return {
        "dispatch_id": finishing.dispatch_id,
        "token": finishing.claim_token,
        "instance_id": finishing.instance_id,
        "outcome": finishing.outcome,
        "now": finishing.now,
        "retry_at": finishing.retry_at,
        "error": finishing.error,
        "run_status": trace.status,
        "termination": trace.termination,
        "response": trace.response or None,
        "run_error": trace.error,
        "run": None if run is None else run.model_dump(mode="json"),
        "messages": [message_row(m) for m in finishing.messages or []],
        "delivery_id": finishing.delivery_id,
        "default_webhook_url": finishing.default_webhook_url,
        "charge_tokens": finishing.charge_tokens,
        "with_owner": finishing.with_owner,
        "claim_next": None
        if claim is None
        else {
            "mode": claim.mode,
            "token": claim.token,
            "consumer_id": claim.consumer_id,
            "lease_until": claim.lease_until,
            "unstarted_before": claim.unstarted_before,
            "limit": claim.limit,
            "budgets": claim.budgets,
        },
    }


def _call(statement: str, params: dict[str, Any]) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(statement, {"p": json.dumps(params)})
        (answer,) = cursor.fetchone()  # type: ignore[misc]
    return json.loads(answer) if isinstance(answer, str) else dict(answer)


def _dispatch(row: dict[str, Any]) -> DispatchRecord:
    return record(list(row), tuple(row.values()))


def _message(row: dict[str, Any]) -> MessageRecord:
    message = ChatMessage.model_validate(
        {
            "id": row["message_id"],
            "role": row["role"],
            "content": row["content"],
            "tool_calls": row["tool_calls"],
            "tool_call_id": row["tool_call_id"],
            "visibility": row["visibility"],
            "metadata": row["metadata"],
        }
    )
    return MessageRecord(
        message_id=row["message_id"],
        thread_id=row["thread_id"],
        seq=row["seq"],
        message=message,
        produced_by_run_id=row["run_id"],
        step_index=row["step_index"],
        tool_call_id=row["tool_call_id"],
        created_at=row["created_at"],
    )
