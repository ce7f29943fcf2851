"""One inbox per thread (docs/inbox.md): a message delivered under the thread's inbox policy
(mailbox_app/contract/inbox.py) coalesces with the messages around it into one run, steers the running
run, or queues for the next one — decided in one transaction, under the thread's locks, by PostgreSQL.

A message arriving while no claim holds the thread joins the thread's open window — its queued, never
claimed dispatch — if there is one: the message is appended to the log and to that dispatch's input (its
request snapshot's `input_message_ids`, in arrival order, and its run's), and the dispatch's start is
pushed to min(now + debounce_ms, first message + max_wait_ms). Otherwise it opens a window: a new run and
dispatch, available `debounce_ms` from now. A claim that took the window's dispatch first makes the next
message open a new window; a claim that comes second takes the dispatch with the message in it (the
thread's epoch row serializes the two: mailbox_app/store/inbox.py). A message arriving while a claim
holds the thread (a run active) does what `while_running` says: `steer` delivers it into the live run
(when the run cannot take it, it joins or opens the next window), `queue` joins or opens the next window
(which waits behind the claim), `interrupt` does the same and stops the active run once committed.

Nothing here is in a worker's memory: the window is rows, its start is `available_at`, its doorbell is
rung for that time and the sweep rings it again if that doorbell is lost (a worker killed mid-window).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction

from mailbox_app import store
from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import consumer_id, now_ms
from mailbox_app.contract.inbox import InboxOutcome, InboxPolicy, WhileRunning
from mailbox_app.contract.mailbox import DispatchRecord, LiveRunTarget
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import (
    RunRequest,
    normalize_mailbox_run_mode,
    normalize_message_ids,
    validate_run_inputs,
)
from mailbox_app.contract.storage import InvalidInput, NotFound, RunRequestSnapshot
from mailbox_app.realtime import doorbells
from mailbox_app.services import mailbox
from mailbox_app.services.mailbox import SubmitStatus
from mailbox_app.services.preparation import build_dispatch, prepare_run_for_dispatch
from mailbox_app.store import inbox as windows
from mailbox_app.store.ports import run_store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InboxResult:
    """What became of the messages: `coalesced` into `dispatch_id`'s input (a window not yet claimed),
    `steered` into the running `run_id`, or `queued` as the first input of a new dispatch (`status`
    `running` when it was claimed at once). `starts_at`: when a queued dispatch becomes claimable."""

    outcome: InboxOutcome
    dispatch_id: str
    run_id: str
    thread_id: str
    status: SubmitStatus
    starts_at: int | None = None


def deliver(request: RunRequest, policy: InboxPolicy, *, owner_id: int | None = None) -> InboxResult:
    """Deliver the request's messages to the thread under `policy`, in one transaction (the caller's, if
    any). Raises NotFound when the thread is another owner's (nothing written). The request's options
    (agent, metadata, priority, timeout, webhook) matter only when it opens a window."""
    request = normalize_mailbox_run_mode(request, background=True)
    thread_id, messages = validate_run_inputs(request.thread_id, request.messages, allow_empty=False)
    messages = normalize_message_ids(messages)
    request = request.with_(thread_id=thread_id, messages=messages)
    owner_key = "" if owner_id is None else str(owner_id)
    with transaction.atomic():
        now = now_ms()
        # the thread (created with its owner) and its row lock first, as every submit: the log's order is
        # the messages' arrival order
        run_store().ensure_thread(thread_id=thread_id, owner_id=owner_id, now=now)
        run_store().append_messages(thread_id=thread_id, messages=messages, now=now)
        _check_owner(thread_id, owner_id)
        state = windows.lock_inbox(thread_id, owner_key)
        active = state.active
        if active is not None and policy.while_running is WhileRunning.STEER and _steer(active, messages):
            return InboxResult(
                InboxOutcome.STEERED, active.dispatch_id, active.run_id, thread_id, SubmitStatus.RUNNING
            )
        if active is not None and policy.while_running is WhileRunning.INTERRUPT:
            transaction.on_commit(lambda: _stop(active))
        if state.window is not None:
            return _coalesce(state.window, messages, policy, owner_id, now)
        return _open(request, messages, policy, owner_id, now, claim=active is None)


def _check_owner(thread_id: str, owner_id: int | None) -> None:
    if owner_id is None:
        return
    thread = run_store().load_thread(thread_id=thread_id)
    if thread is None or thread.owner_id != owner_id:
        raise NotFound(f"thread {thread_id} not found")


def _steer(active: DispatchRecord, messages: list[ChatMessage]) -> bool:
    """Into the live run of the thread's claim (already in the log): whether it took them."""
    command = {"kind": "messages", "messages": [m.model_dump(mode="json") for m in messages]}
    return mailbox.deliver_live_command(
        LiveRunTarget(active.thread_id, active.run_id, active.dispatch_id), command
    )


def _stop(active: DispatchRecord) -> None:
    """`interrupt`: the newer input wins over the run in progress (after the commit, best effort)."""
    try:
        mailbox.cancel_active_dispatch(active, wait=False)
    except Exception:
        log.warning("could not stop run %s for newer input", active.run_id, exc_info=True)


def _open(
    request: RunRequest,
    messages: list[ChatMessage],
    policy: InboxPolicy,
    owner_id: int | None,
    now: int,
    *,
    claim: bool,
) -> InboxResult:
    """A new window: the run and its dispatch, available `debounce_ms` from now (claimed at once when
    that is now and nothing holds the thread)."""
    thread_id = request.thread_id
    delay = min(policy.debounce_ms, policy.window_cap_ms)
    prepared, run_id = prepare_run_for_dispatch(request, thread_id, messages, owner_id=owner_id)
    dispatch = build_dispatch(prepared.with_(start_after_ms=delay), thread_id, now=now)
    dispatch = store.enqueue(dispatch, owner_key="" if owner_id is None else str(owner_id))
    windows.open_window(thread_id, dispatch.dispatch_id, count=len(messages), now=now)
    status = SubmitStatus.QUEUED
    if delay > 0:
        doorbells.ring_at(thread_id, dispatch.dispatch_id, dispatch.available_at)
    elif claim:
        claimed = store.claim(thread_id, consumer_id(), awaken_settings.MAILBOX.lease_ms, now)
        if claimed:
            doorbells.hand_over_claimed_on_commit(
                thread_id, claimed[0].dispatch_id, claimed[0].claim_token or ""
            )
            if claimed[0].dispatch_id == dispatch.dispatch_id:
                status = SubmitStatus.RUNNING
        else:
            doorbells.ring_on_commit(thread_id, dispatch.dispatch_id)
    return InboxResult(
        InboxOutcome.QUEUED, dispatch.dispatch_id, run_id, thread_id, status, dispatch.available_at
    )


def _coalesce(
    window: windows.Window, messages: list[ChatMessage], policy: InboxPolicy, owner_id: int | None, now: int
) -> InboxResult:
    """The messages join the window's input (the dispatch's and its run's, in arrival order) and push its
    start back, never past the window's cap."""
    dispatch = window.dispatch
    if dispatch.request is None:
        raise InvalidInput(f"dispatch {dispatch.dispatch_id} has no request snapshot")
    snapshot = RunRequestSnapshot.model_validate(dispatch.request)
    ids = [*snapshot.input_message_ids, *(m.id for m in messages if m.id)]
    extended = snapshot.model_copy(
        update={"input_message_ids": ids, "input_message_count": snapshot.input_message_count + len(messages)}
    )
    run = run_store().load_run(run_id=dispatch.run_id)
    if run is None:
        raise InvalidInput(f"run {dispatch.run_id} of dispatch {dispatch.dispatch_id} not found")
    run_store().prepare_run(
        run=run.model_copy(update={"request": extended, "updated_at": now}),
        messages=messages,
        input_trigger_ids=ids,
        owner_id=owner_id,
        now=now,
    )
    starts_at = policy.start_at(opened_at=window.opened_at, now=now)
    moved = store.extend_queued(
        dispatch.dispatch_id, request=extended.model_dump(mode="json"), available_at=starts_at, now=now
    )
    windows.touch_window(window, count=len(messages), now=now)
    doorbells.ring_at(moved.thread_id, moved.dispatch_id, moved.available_at)
    return InboxResult(
        InboxOutcome.COALESCED,
        moved.dispatch_id,
        moved.run_id,
        moved.thread_id,
        SubmitStatus.QUEUED,
        moved.available_at,
    )


def purge_on_gc(*, now: int, **_: object) -> dict[str, int]:
    """The mailbox GC's `gc_ran` receiver: windows whose dispatch was claimed or ended (bounded)."""
    return {"inbox_windows": windows.purge_closed_windows(awaken_settings.GC_MAX_PER_TICK)}
