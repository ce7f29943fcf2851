"""A submit in one round trip: `awaken_submit` (submit.sql, beside this module) writes the thread, the
run, its messages and the dispatch, claims inline, and records the webhook subscription and the
idempotency key's answer — the transaction of services/mailbox.py's submit paths, fused for the
built-in run store (see this package's docstring for when)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.db import DatabaseError, IntegrityError, connection

from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest, request_snapshot
from mailbox_app.contract.storage import AlreadyExists, InvalidInput, NotFound, StoreError
from mailbox_app.store.budgets import budget_json
from mailbox_app.store.rows import record
from mailbox_app.store.runs_tables import message_row


class InlineClaim(StrEnum):
    """What the submit claims: the thread's next dispatch (background), this one (foreground), none
    (a delayed start)."""

    THREAD = "thread"
    DISPATCH = "dispatch"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """An idempotency key whose answer the submit records in its own transaction. `lock_id` is the
    advisory lock a request holds while it runs (runs_app/api/idempotency.py): a duplicate that finds it
    held is refused at once (`SubmitRefused`, reason `in_progress`)."""

    user_id: int
    key: str
    fingerprint: str
    status_code: int
    not_before: int  # keys created before this have expired
    lock_id: int


@dataclass(frozen=True, slots=True)
class Submitted:
    run_id: str
    dispatch_id: str
    thread_id: str
    status: str  # "running" | "queued"
    agent_id: str
    available_at: int
    claimed: DispatchRecord | None


@dataclass(frozen=True, slots=True)
class Replayed:
    """The key was answered before: its stored answer (nothing was written)."""

    status_code: int
    response: dict[str, Any]
    same_request: bool


class InboxDecides(StoreError):
    """Nothing was written: the submit deferred to the thread's inbox policy (`defer_to_inbox`) and the
    thread has one (mailbox_app/services/inbox.py takes it from there)."""


class SubmitRefused(StoreError):
    """Nothing was written: the thread is busy (a `reject` submit), still has a claim (a foreground
    submit's inline claim), or a request with the same idempotency key is in flight."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SubmitParams:
    """What a submit decides before it writes (the service's part: ids, the claim, the options)."""

    request: RunRequest
    thread_id: str
    messages: list[ChatMessage]  # with their ids
    owner_id: int | None
    dispatch_id: str
    new_run_id: str
    reuse_waiting: bool
    priority: int
    available_at: int
    max_attempts: int
    timeout_ms: int
    claim: InlineClaim
    reject_if_busy: bool
    token: str
    consumer_id: str
    lease_until: int
    now: int
    webhook: str | None = None
    idempotency: IdempotencyKey | None = None
    defer_to_inbox: bool = False
    interrupt: bool = False  # foreground: the thread's epoch moved on, its queued work superseded


AWAKEN_SUBMIT = "SELECT awaken_submit(%(p)s::jsonb)"


def submit(params: SubmitParams) -> Submitted | Replayed:
    """One statement (its own transaction: call it outside one). Raises NotFound (the thread is another
    owner's), InvalidInput (the run asked for is another thread's or not open), AlreadyExists (a dispatch
    id or live dedupe key taken), SubmitRefused or InboxDecides; then nothing was written."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(AWAKEN_SUBMIT, {"p": json.dumps(_payload(params))})
            (answer,) = cursor.fetchone()  # type: ignore[misc]
    except IntegrityError as exc:
        request = params.request
        if request.dedupe_key is not None and "dedupe_key" in str(exc):
            raise AlreadyExists(f"dedupe_key={request.dedupe_key}") from None
        if "mailbox_dispatch_pkey" in str(exc):
            raise AlreadyExists(f"dispatch_id={params.dispatch_id}") from None
        raise
    except DatabaseError as exc:
        raise _refusal(exc) from None
    result: dict[str, Any] = json.loads(answer) if isinstance(answer, str) else answer
    if result.get("replay") is not None:
        replay = result["replay"]
        return Replayed(int(replay["status_code"]), dict(replay["response"]), bool(replay["same_request"]))
    claimed = result["claimed"]
    return Submitted(
        run_id=result["run_id"],
        dispatch_id=result["dispatch_id"],
        thread_id=result["thread_id"],
        status=result["status"],
        agent_id=result["agent_id"],
        available_at=int(result["available_at"]),
        claimed=None if claimed is None else record(list(claimed), tuple(claimed.values())),
    )


def _refusal(exc: DatabaseError) -> Exception:
    """The function's refusals (SQLSTATE AW…) as the store's errors; anything else as it came."""
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    message = getattr(getattr(cause, "diag", None), "message_primary", None) or str(exc)
    if sqlstate == "AW404":
        return NotFound(message)
    if sqlstate == "AW400":
        return InvalidInput(message)
    if sqlstate in ("AW409", "AW423"):
        return SubmitRefused(message)
    if sqlstate == "AW412":
        return InboxDecides(message)
    return exc


def _payload(params: SubmitParams) -> dict[str, Any]:
    request = params.request
    key = params.idempotency
    return {
        "thread_id": params.thread_id,
        "owner_id": params.owner_id,
        "now": params.now,
        "messages": [message_row(m) for m in params.messages],
        "trigger_message_ids": [m.id for m in params.messages if m.id],
        "continue_run_id": request.continue_run_id,
        "run_id_hint": request.run_id_hint,
        "reuse_waiting": params.reuse_waiting,
        "new_run_id": params.new_run_id,
        "snapshot": request_snapshot(request, params.messages).model_dump(mode="json"),
        "agent_id": request.agent_id or None,
        "parent_run_id": request.parent_run_id,
        "transport_request_id": request.transport_request_id,
        "parent_thread_id": request.parent_thread_id,
        "metadata": request.metadata or {},
        "timeout_ms": params.timeout_ms,
        "dispatch_id": params.dispatch_id,
        "priority": params.priority,
        "dedupe_key": request.dedupe_key,
        "available_at": params.available_at,
        "max_attempts": params.max_attempts,
        "reject_if_busy": params.reject_if_busy,
        "claim": params.claim.value,
        "token": params.token,
        "consumer_id": params.consumer_id,
        "lease_until": params.lease_until,
        "budgets": budget_json(),  # the inline claim's token budgets (store/budgets.py; None: off)
        "webhook": params.webhook,
        "defer_to_inbox": params.defer_to_inbox,
        "interrupt": params.interrupt,
        "idempotency": None
        if key is None
        else {
            "user_id": key.user_id,
            "key": key.key,
            "fingerprint": key.fingerprint,
            "status_code": key.status_code,
            "not_before": key.not_before,
            "lock_id": key.lock_id,
        },
    }
