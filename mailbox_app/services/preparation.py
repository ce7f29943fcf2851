"""Turning a request into durable state and back: prepare the run, build the dispatch, reconstruct
the request from the run snapshot + thread log when a worker executes it (spec §4.9–§4.10)."""

from __future__ import annotations

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.contract.message import ChatMessage, MessageRecord
from mailbox_app.contract.requests import (
    AdapterKind,
    RunMode,
    RunRequest,
    RunRequestExtras,
    normalize_message_ids,
    request_snapshot,
)
from mailbox_app.contract.storage import InvalidInput, RunRecord, RunRequestSnapshot, ThreadRecord
from mailbox_app.store.ports import run_store

DEFAULT_PRIORITY = 128


def reusable_waiting_run_id(thread_id: str) -> str | None:
    """The thread's resumable waiting run: the open run first, else the latest run (always durable)."""
    store = run_store()
    return _reusable_waiting(
        thread_id, store.load_thread(thread_id=thread_id), store.latest_run(thread_id=thread_id)
    )


def _reusable_waiting(thread_id: str, thread: ThreadRecord | None, latest: RunRecord | None) -> str | None:
    if thread is not None and thread.open_run_id:
        if latest is not None and latest.run_id == thread.open_run_id:
            run: RunRecord | None = latest
        else:
            run = run_store().load_run(run_id=thread.open_run_id)
        if run is not None and run.thread_id == thread_id and run.is_resumable_waiting:
            return run.run_id
    return latest.run_id if latest is not None and latest.is_resumable_waiting else None


def prepare_run_for_dispatch(
    request: RunRequest, thread_id: str, messages: list[ChatMessage], *, owner_id: int | None = None
) -> tuple[RunRequest, str]:
    """Append the messages and create (or refresh) the run the dispatch will activate, in one
    checkpoint (one transaction). Returns the request updated with `continue_run_id` or
    `run_id_hint`, and the run id."""
    store = run_store()
    thread, previous = store.load_thread_and_latest_run(thread_id=thread_id)
    if request.continue_run_id is None and request.run_id_hint is None:
        waiting = _reusable_waiting(thread_id, thread, previous)
        if waiting is not None:
            request = request.with_(continue_run_id=waiting)
    chosen = next((i for i in (request.continue_run_id, request.run_id_hint) if i and i.strip()), None)
    run_id = chosen or uuid7()
    normalized = normalize_message_ids(messages)
    request = request.with_(messages=normalized)
    if request.continue_run_id is None:
        request = request.with_(run_id_hint=run_id)
    existing = None
    if chosen is not None:  # a freshly minted id cannot exist yet
        existing = (
            previous if previous is not None and previous.run_id == run_id else store.load_run(run_id=run_id)
        )
    now = now_ms()
    if existing is not None:
        if existing.thread_id != thread_id:
            raise InvalidInput(
                f"run_id '{run_id}' belongs to thread '{existing.thread_id}', not '{thread_id}'"
            )
        if existing.status is not RunStatus.CREATED and not existing.is_resumable_waiting:
            raise InvalidInput(f"run_id '{run_id}' is not open for dispatch")
        record = existing
    else:
        inherit = previous is not None and previous.status is not RunStatus.CREATED
        record = RunRecord(
            run_id=run_id,
            thread_id=thread_id,
            agent_id=request.agent_id
            or (previous.agent_id if inherit and previous and previous.agent_id.strip() else "default"),
            parent_run_id=request.parent_run_id,
            transport_request_id=request.transport_request_id,
            status=RunStatus.CREATED,
            created_at=now,
            updated_at=now,
            state=previous.state if inherit and previous else None,
            metadata=request.metadata or {},
            timeout_ms=request.timeout_ms or awaken_settings.RUN_TIMEOUT_MS,
        )
    prepared = record.model_copy(update={"request": request_snapshot(request, normalized), "updated_at": now})
    # the store sets `input` (range 1..last seq, trigger ids) under the thread lock it appends with
    store.prepare_run(
        run=prepared,
        messages=normalized,
        input_trigger_ids=[m.id for m in normalized if m.id],
        owner_id=owner_id,
        now=now,
    )
    # the dispatch records the run's agent (inherited or default included): limits count by it
    return request.with_(agent_id=prepared.agent_id), run_id


def build_dispatch(request: RunRequest, thread_id: str, *, now: int | None = None) -> DispatchRecord:
    run_id = request.continue_run_id or request.run_id_hint
    if not run_id:
        raise InvalidInput("run_id missing after preparation")
    stamp = now_ms() if now is None else now
    snapshot = request_snapshot(request, normalize_message_ids(list(request.messages)))
    return DispatchRecord(
        dispatch_id=request.dispatch_id_hint or uuid7(),
        thread_id=thread_id,
        run_id=run_id,
        priority=DEFAULT_PRIORITY if request.priority is None else request.priority,
        dedupe_key=request.dedupe_key,
        available_at=stamp + request.start_after_ms,
        max_attempts=awaken_settings.MAILBOX.default_max_attempts,
        created_at=stamp,
        updated_at=stamp,
        request=snapshot.model_dump(mode="json"),
        agent_key=request.agent_id or "",
    )


def reconstruct_run_request(dispatch: DispatchRecord) -> RunRequest:
    """The executor's request, rebuilt from the dispatch's own snapshot (the run's for dispatches written
    before dispatches carried one) and the thread log (spec §4.10)."""
    run = run_store().load_run(run_id=dispatch.run_id)
    if run is None:
        raise InvalidInput(f"run '{dispatch.run_id}' not found for dispatch '{dispatch.dispatch_id}'")
    return reconstruct_from(dispatch, run)


def reconstruct_from(
    dispatch: DispatchRecord, run: RunRecord, messages: list[MessageRecord] | None = None
) -> RunRequest:
    """`reconstruct_run_request` for a run already loaded (the fenced start passes it), and with the
    activation's messages when the start read them too (the fused start: `messages`)."""
    if run.thread_id != dispatch.thread_id:
        raise InvalidInput(
            f"run '{run.run_id}' belongs to thread '{run.thread_id}', "
            f"not dispatch thread '{dispatch.thread_id}'"
        )
    snapshot = (
        RunRequestSnapshot.model_validate(dispatch.request) if dispatch.request is not None else run.request
    )
    if snapshot is None:
        raise InvalidInput(f"run '{run.run_id}' has no request snapshot")
    request = RunRequest(
        thread_id=run.thread_id,
        messages=_activation_messages(run, snapshot, messages),
        messages_already_persisted=True,
        origin=snapshot.origin,  # type: ignore[arg-type]
        run_mode=RunMode.RESUME,
        adapter=AdapterKind.INTERNAL,
        agent_id=run.agent_id if run.agent_id.strip() else None,
        parent_run_id=run.parent_run_id,
        parent_thread_id=snapshot.parent_thread_id,
        transport_request_id=snapshot.transport_request_id,
        decisions=[(d.call_id, d.resume) for d in snapshot.decisions],
        frontend_tools=list(snapshot.frontend_tools),
        metadata=run.metadata or None,
        timeout_ms=run.timeout_ms,
    )
    if snapshot.request_extras is not None:
        request = RunRequestExtras.from_value(snapshot.request_extras).apply_to(request)
    if run.is_resumable_waiting:
        request = request.with_(continue_run_id=run.run_id)
    else:
        request = request.with_(run_id_hint=run.run_id)
    return request.with_(dispatch_id=dispatch.dispatch_id)


def _activation_messages(
    run: RunRecord, snapshot: RunRequestSnapshot, read: list[MessageRecord] | None
) -> list[ChatMessage]:
    """The dispatch's own input messages (by id, in their order), else the run's input range; `read`:
    what the fused start already read (the same rows), else they are loaded here.

    The reference's `activation_messages_for_run` and `activation_messages_from_range`."""
    store = run_store()
    if snapshot.input_message_ids:
        if read is None:
            read = store.load_message_records(thread_id=run.thread_id, message_ids=snapshot.input_message_ids)
        found = {r.message_id: r.message for r in read}
        missing = next((i for i in snapshot.input_message_ids if i not in found), None)
        if missing is not None:
            raise InvalidInput(f"message '{missing}' not found for run '{run.run_id}'")
        return [found[i] for i in snapshot.input_message_ids]
    if run.input is None or run.input.range is None:
        return []
    if read is None:
        read = store.load_message_records_range(
            thread_id=run.thread_id, from_seq=run.input.range.from_seq, to_seq=run.input.range.to_seq
        )
    return [r.message for r in read]
