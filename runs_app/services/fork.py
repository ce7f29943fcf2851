"""Branching a conversation (time travel): fork a thread at one of its runs, and replay a run from one
of its recorded steps (docs/replay-and-budgets.md).

**Fork.** A new thread of the caller's holding the source thread's messages up to and including the
chosen run's output (less the messages that started later runs: their turns come after the fork point),
its metadata and title copied and `forked_from: {thread_id, run_id}` added to the metadata. The new
thread is independent: runs on either never touch the other.

**Replay.** A new run that starts where the source run started — by default on a fork of its thread at
the run before it, so the source thread is untouched — with the source run's input (the messages that
started it, under their ids) and a journal holding the steps the source recorded before `from_step`:
its attempts replay those (`step_replayed`) and execute `from_step` and every later step anew. A step's
key must name the same step in both runs; the built-in agent's keys do (`steps:<message id>:<i>`, the
message that asked, which the replay carries under its id). A replay re-runs the run's first turn: the
input of later turns (a decision, a continuation) is not replayed.

Both are one transaction: the fork's thread and messages, and for a replay its run, dispatch, inline
claim and journal — a worker starts the replayed run only once all of it committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q

from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import AlreadyExists, RunRecord, ThreadRecord
from mailbox_app.services import mailbox
from mailbox_app.services.mailbox import SubmitStatus
from runs_app import store
from runs_app.models import Run
from runs_app.services import selectors
from runs_app.store import forks
from runs_app.store.threads import metadata_problem

FORKED_FROM = "forked_from"  # the fork's metadata key: {"thread_id", "run_id"}
REPLAY_OF = "replay_of"  # the replayed run's metadata key: {"run_id", "from_step"}


class ForkError(Exception):
    """A fork or replay that cannot be made; nothing was written. `field` names the request's field."""

    code = "invalid"
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(ForkError):
    status = 404

    def __init__(self, what: str, identifier: str, *, field: str | None = None) -> None:
        super().__init__(f"{what} not found: {identifier}", field=field)
        self.code = f"{what}_not_found"


class ThreadExists(ForkError):
    code = "thread_exists"
    status = 409


class StepNotInJournal(ForkError):
    code = "step_not_in_journal"


@dataclass(frozen=True, slots=True)
class Forked:
    thread: ThreadRecord
    forked_from: dict[str, str | None]
    message_count: int


@dataclass(frozen=True, slots=True)
class Replay:
    run_id: str
    thread_id: str
    dispatch_id: str
    status: SubmitStatus
    forked_from: dict[str, str | None]
    replay_of: dict[str, str]
    replayed_steps: int  # the steps the new run's journal starts with (recorded before `from_step`)


def fork_thread(
    owner_id: int, source_thread_id: str, *, at_run_id: str | None = None, thread_id: str | None = None
) -> Forked:
    """Fork the caller's thread at `at_run_id` (default: its latest run) into `thread_id` (default: a new
    id). NotFound: the thread, or the run on it; ThreadExists: the id is taken."""
    source = selectors.owned_thread(owner_id, source_thread_id)
    if source is None:
        raise NotFound("thread", source_thread_id)
    at = _run_on(source_thread_id, at_run_id) if at_run_id else _latest_run(source_thread_id)
    with transaction.atomic():
        forked = _fork(owner_id, source, at, thread_id or uuid7())
    return forked


def replay_run(owner_id: int, run_id: str, *, from_step: str, thread_id: str | None = None) -> Replay:
    """Replay the caller's run from `from_step` on a fork of its thread at the run before it, created
    under `thread_id` (default: a new id). NotFound: the run; StepNotInJournal: `from_step` is not a key
    of its journal; ThreadExists: the id is taken; ForkError: the run has no input to replay."""
    source_run = selectors.owned_run(owner_id, run_id)
    if source_run is None:
        raise NotFound("run", run_id)
    keys = forks.journal_keys(run_id)
    if from_step not in keys:
        raise StepNotInJournal(
            f"run {run_id} has no step {from_step!r} in its journal"
            + (
                f" (its steps: {', '.join(keys[:20])}{', …' if len(keys) > 20 else ''})"
                if keys
                else " (it is empty)"
            ),
            field="from_step",
        )
    thread = selectors.owned_thread(owner_id, source_run.thread_id)
    row = Run.objects.filter(run_id=run_id).first()
    if thread is None or row is None:  # gone since owned_run read it
        raise NotFound("run", run_id)
    inputs = _inputs(source_run)
    if not inputs:
        raise ForkError(f"run {run_id} has no input messages to replay", field="run_id")
    before = _run_before(row)
    replay_of = {"run_id": run_id, "from_step": from_step}
    with transaction.atomic():
        forked = _fork(owner_id, thread, before, thread_id or uuid7(), first=None if before else row)
        submitted = mailbox.submit_background(
            RunRequest(
                thread_id=forked.thread.id,
                messages=inputs,
                agent_id=source_run.agent_id,
                metadata={**source_run.metadata, REPLAY_OF: replay_of},
                timeout_ms=source_run.timeout_ms,
            ),
            owner_id=owner_id,
        )
        copied = forks.copy_journal(source_run_id=run_id, run_id=submitted.run_id, from_step=from_step)
    return Replay(
        run_id=submitted.run_id,
        thread_id=submitted.thread_id,
        dispatch_id=submitted.dispatch_id,
        status=submitted.status,
        forked_from=forked.forked_from,
        replay_of=replay_of,
        replayed_steps=copied,
    )


def _fork(
    owner_id: int, source: ThreadRecord, at: Run | None, thread_id: str, *, first: Run | None = None
) -> Forked:
    """The fork's thread and messages. At a run: up to its output, less the triggers of later runs. With
    no run: the messages before `first`'s input (its triggers and later runs' left out), or, without
    `first` either, the whole log."""
    forked_from: dict[str, str | None] = {"thread_id": source.id, "run_id": None if at is None else at.run_id}
    metadata: dict[str, Any] = {**source.metadata, FORKED_FROM: forked_from}
    problem = metadata_problem(metadata)
    if problem is not None:
        raise ForkError(f"the source thread's metadata with {FORKED_FROM} {problem}", field="metadata")
    if at is not None:
        cutoff, excluded = forks.produced_up_to(source.id, at), forks.triggers_after(source.id, at)
    elif first is not None:
        cutoff = int(((first.input or {}).get("range") or {}).get("to_seq") or 0)
        excluded = forks.triggers_after(source.id, _run_before(first)) if cutoff else []
    else:
        cutoff, excluded = source.message_count, []
    try:
        fork = forks.create_fork(
            source_thread_id=source.id,
            thread_id=thread_id,
            owner_id=owner_id,
            title=source.title,
            metadata=metadata,
            cutoff=cutoff,
            excluded=excluded,
            now=now_ms(),
        )
    except AlreadyExists:
        raise ThreadExists(f"thread already exists: {thread_id}", field="thread_id") from None
    created = store.load_thread(thread_id=fork.thread_id)
    assert created is not None  # written by this transaction
    return Forked(created, forked_from, fork.message_count)


def _run_on(thread_id: str, run_id: str) -> Run:
    row = Run.objects.filter(run_id=run_id, thread_id=thread_id).first()
    if row is None:
        raise NotFound("run", f"{run_id} on thread {thread_id}", field="at_run_id")
    return row


def _latest_run(thread_id: str) -> Run | None:
    return Run.objects.filter(thread_id=thread_id).order_by("-created_at", "-run_id").first()


def _run_before(run: Run) -> Run | None:
    """The run created on the same thread right before `run` (by creation, then id)."""
    earlier = Q(created_at__lt=run.created_at) | Q(created_at=run.created_at, run_id__lt=run.run_id)
    return Run.objects.filter(earlier, thread_id=run.thread_id).order_by("-created_at", "-run_id").first()


def _inputs(run: RunRecord) -> list[ChatMessage]:
    """The messages that started the run (its triggers, else its dispatch's input), as they are in the
    log, under their ids."""
    ids = list(run.input.trigger_message_ids) if run.input is not None else []
    if not ids and run.request is not None:
        ids = list(run.request.input_message_ids)
    records = store.load_message_records(thread_id=run.thread_id, message_ids=ids) if ids else []
    return [record.message.model_copy(update={"id": record.message_id}) for record in records]
