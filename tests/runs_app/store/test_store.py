"""The thread/run store: append-only message log (§1.10, §7.1), run records (§1.8, §1.14) and the thread
run projection applied by every checkpoint (§1.9)."""

from __future__ import annotations

from typing import Any

import pytest

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import (
    ChatMessage,
    MessageSeqRange,
    Role,
    RunMessageInput,
    ToolCall,
    Visibility,
)
from mailbox_app.contract.storage import (
    AlreadyExists,
    InvalidInput,
    RunRecord,
    RunRequestSnapshot,
    TerminationReason,
)
from mailbox_app.contract.suspension import RunResumeDecision, RunWaitingState, ToolCallResume, WaitingTicket
from runs_app import store
from runs_app.models import Message, Run, Thread

pytestmark = pytest.mark.django_db

NOW = 1_700_000_000_000


def user(text: str, message_id: str | None = None, **extra: Any) -> ChatMessage:
    return ChatMessage.user(text, id=message_id, **extra)


def make_run(
    run_id: str,
    thread_id: str = "t1",
    status: RunStatus = RunStatus.CREATED,
    *,
    created_at: int = 1000,
    updated_at: int = 1000,
    **extra: Any,
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        thread_id=thread_id,
        status=status,
        created_at=created_at,
        updated_at=updated_at,
        **extra,
    )


def thread_pointers(thread_id: str) -> tuple[str | None, str | None, str | None]:
    thread = store.load_thread(thread_id=thread_id)
    assert thread is not None
    return thread.active_run_id, thread.open_run_id, thread.latest_run_id


def set_pointers(thread_id: str, *, active: str | None, open_: str | None) -> None:
    Thread.objects.filter(id=thread_id).update(active_run_id=active, open_run_id=open_)


# --- append-only message log ----------------------------------------------------------------------


def test_append_allocates_one_based_seq_and_returns_records() -> None:
    first = store.append_messages(
        thread_id="t1", messages=[user("a", "m1"), user("b", "m2"), user("c", "m3")], now=NOW
    )
    assert [(r.seq, r.message_id, r.message.text) for r in first] == [
        (1, "m1", "a"),
        (2, "m2", "b"),
        (3, "m3", "c"),
    ]
    assert all(r.thread_id == "t1" and r.created_at == NOW for r in first)

    second = store.append_messages(thread_id="t1", messages=[user("d", "m4"), user("e", "m5")], now=NOW + 1)
    assert [r.seq for r in second] == [4, 5]

    thread = store.load_thread(thread_id="t1")
    assert thread is not None and thread.message_count == 5 and thread.updated_at == NOW + 1
    # another thread has its own sequence
    [other] = store.append_messages(thread_id="t2", messages=[user("x", "m1")], now=NOW)
    assert other.seq == 1 and other.thread_id == "t2"


def test_append_mints_ids_and_projects_run_metadata() -> None:
    tool_msg = ChatMessage(
        role=Role.TOOL,
        content="result",
        tool_call_id="call-1",
        metadata={"run_id": "r1", "step_index": 2},
    )
    assistant = ChatMessage(
        role=Role.ASSISTANT,
        content=[{"type": "text", "text": "calling"}],
        tool_calls=[ToolCall(id="call-1", name="search", arguments={"q": "x"})],
    )
    records = store.append_messages(thread_id="t1", messages=[assistant, tool_msg], now=NOW)

    assert all(r.message_id for r in records)
    assert records[0].message_id != records[1].message_id
    assert records[0].message.id == records[0].message_id
    assert records[0].message.tool_calls == [ToolCall(id="call-1", name="search", arguments={"q": "x"})]
    assert records[1].produced_by_run_id == "r1"
    assert records[1].step_index == 2
    assert records[1].tool_call_id == "call-1"
    loaded = store.load_messages(thread_id="t1")
    assert loaded == [r.message for r in records]


def test_reappending_an_existing_message_id_is_skipped_never_rewritten() -> None:
    store.append_messages(thread_id="t1", messages=[user("original", "m1")], now=NOW)

    again = store.append_messages(
        thread_id="t1",
        messages=[user("rewritten", "m1"), user("new", "m2"), user("dup in batch", "m2")],
        now=NOW + 5,
    )

    assert [(r.seq, r.message_id, r.message.text) for r in again] == [(2, "m2", "new")]
    records = store.load_message_records_range(thread_id="t1", from_seq=1, to_seq=100)
    assert [(r.seq, r.message_id, r.message.text, r.created_at) for r in records] == [
        (1, "m1", "original", NOW),
        (2, "m2", "new", NOW + 5),
    ]
    thread = store.load_thread(thread_id="t1")
    assert thread is not None and thread.message_count == 2
    # a batch made only of known ids appends nothing and allocates no seq
    assert store.append_messages(thread_id="t1", messages=[user("x", "m1"), user("y", "m2")]) == []
    [next_record] = store.append_messages(thread_id="t1", messages=[user("z", "m3")])
    assert next_record.seq == 3


def test_load_messages_is_none_when_the_thread_has_no_messages() -> None:
    assert store.load_messages(thread_id="missing") is None
    store.ensure_thread(thread_id="empty", now=NOW)
    assert store.load_messages(thread_id="empty") is None
    store.append_messages(thread_id="empty", messages=[], now=NOW)
    assert store.load_messages(thread_id="empty") is None


def test_include_internal_filters_internal_messages() -> None:
    store.append_messages(
        thread_id="t1",
        messages=[
            user("visible 1", "m1"),
            ChatMessage(id="m2", role=Role.USER, content="hidden", visibility=Visibility.INTERNAL),
            ChatMessage(id="m3", role=Role.ASSISTANT, content="visible 2"),
            ChatMessage(id="m4", role=Role.SYSTEM, content="hidden sys", visibility=Visibility.INTERNAL),
        ],
        now=NOW,
    )

    everything = store.load_messages(thread_id="t1")
    assert everything is not None
    assert [m.id for m in everything] == ["m1", "m2", "m3", "m4"]
    assert everything[1].visibility is Visibility.INTERNAL
    public = store.load_messages(thread_id="t1", include_internal=False)
    assert public is not None and [m.id for m in public] == ["m1", "m3"]

    records, total = store.list_message_records(thread_id="t1")
    assert total == 2 and [(r.seq, r.message_id) for r in records] == [(1, "m1"), (3, "m3")]
    records, total = store.list_message_records(thread_id="t1", include_internal=True, offset=1, limit=2)
    assert total == 4 and [r.message_id for r in records] == ["m2", "m3"]

    # only internal messages: nothing public to show
    store.append_messages(
        thread_id="t2",
        messages=[ChatMessage(id="i1", role=Role.USER, content="x", visibility=Visibility.INTERNAL)],
    )
    assert store.load_messages(thread_id="t2", include_internal=False) is None


def test_load_message_record_finds_by_id_within_the_thread() -> None:
    store.append_messages(thread_id="t1", messages=[user("a", "m1"), user("b", "m2")], now=NOW)
    store.append_messages(thread_id="t2", messages=[user("other", "o1")], now=NOW)

    record = store.load_message_record(thread_id="t1", message_id="m2")
    assert record is not None
    assert (record.seq, record.thread_id, record.message.text) == (2, "t1", "b")
    assert store.load_message_record(thread_id="t1", message_id="nope") is None
    assert store.load_message_record(thread_id="t1", message_id="o1") is None
    assert store.load_message_record(thread_id="missing", message_id="m1") is None


def test_load_message_records_range_is_inclusive_and_one_based() -> None:
    store.append_messages(thread_id="t1", messages=[user(f"m{i}", f"m{i}") for i in range(1, 6)], now=NOW)

    def seqs(from_seq: int, to_seq: int, thread_id: str = "t1") -> list[int]:
        return [
            r.seq
            for r in store.load_message_records_range(thread_id=thread_id, from_seq=from_seq, to_seq=to_seq)
        ]

    assert seqs(2, 4) == [2, 3, 4]
    assert seqs(5, 5) == [5]
    assert seqs(1, 1) == [1]
    assert seqs(4, 10) == [4, 5]
    assert seqs(6, 9) == []
    assert seqs(1, 5, thread_id="t2") == []
    records = store.load_message_records_range(thread_id="t1", from_seq=2, to_seq=3)
    assert [r.message_id for r in records] == ["m2", "m3"]
    # seq is the 1-based position MessageSeqRange refers to
    assert MessageSeqRange(from_seq=1, to_seq=5).from_seq == 1


# --- run records ----------------------------------------------------------------------------------


def test_create_and_load_run_round_trips_every_field() -> None:
    run = make_run(
        "r1",
        status=RunStatus.WAITING,
        agent_id="agent-x",
        parent_run_id="r0",
        request=RunRequestSnapshot(
            origin="internal",
            sender_id="s1",
            input_message_ids=["m1", "m2"],
            input_message_count=2,
            request_extras={"run_mode": "resume"},
            decisions=[
                RunResumeDecision(
                    call_id="c1",
                    resume=ToolCallResume(decision_id="dec1", action="resume", result={"ok": True}),
                )
            ],
            parent_thread_id="pt",
        ),
        input=RunMessageInput(
            thread_id="t1", range=MessageSeqRange(from_seq=1, to_seq=2), trigger_message_ids=["m2"]
        ),
        output={"thread_id": "t1", "message_ids": ["m3"]},
        termination_reason=TerminationReason(type="suspended"),
        dispatch_id="d1",
        session_id="s1",
        waiting=RunWaitingState(
            reason="tool_permission",
            ticket_ids=["tk1"],
            tickets=[WaitingTicket(ticket_id="tk1", tool_call_id="c1", tool_name="rm", arguments={"p": 1})],
            since_dispatch_id="d1",
        ),
        started_at=1100,
        steps=3,
        input_tokens=10,
        output_tokens=20,
        state={"revision": 2, "extensions": {"k": "v"}},
    )
    assert store.create_run(run=run) == run
    assert store.load_run(run_id="r1") == run
    assert store.load_thread(thread_id="t1") is not None
    assert store.load_run(run_id="missing") is None


def test_create_run_rejects_a_taken_id_and_keeps_the_original() -> None:
    original = make_run("r1", final_output="first")
    store.create_run(run=original)

    with pytest.raises(AlreadyExists):
        store.create_run(run=make_run("r1", thread_id="t2", final_output="second"))

    assert store.load_run(run_id="r1") == original
    assert Run.objects.count() == 1


def test_latest_run_orders_by_updated_at_then_created_at_then_run_id() -> None:
    assert store.latest_run(thread_id="t1") is None
    store.create_run(run=make_run("r-a", created_at=10, updated_at=100))
    store.create_run(run=make_run("r-b", created_at=20, updated_at=300))
    store.create_run(run=make_run("r-c", created_at=30, updated_at=200))
    store.create_run(run=make_run("r-other", thread_id="t2", created_at=1, updated_at=10**9))
    latest = store.latest_run(thread_id="t1")
    assert latest is not None and latest.run_id == "r-b"

    # same updated_at: the later created_at wins (even with a smaller run id)
    store.create_run(run=make_run("r-0", created_at=25, updated_at=300))
    latest = store.latest_run(thread_id="t1")
    assert latest is not None and latest.run_id == "r-0"

    # same updated_at and created_at: the higher run id wins
    store.create_run(run=make_run("r-y", created_at=25, updated_at=300))
    store.create_run(run=make_run("r-x", created_at=25, updated_at=300))
    latest = store.latest_run(thread_id="t1")
    assert latest is not None and latest.run_id == "r-y"


def test_list_runs_filters_orders_and_pages() -> None:
    store.create_run(run=make_run("r3", status=RunStatus.DONE, created_at=30))
    store.create_run(run=make_run("r1", created_at=10))
    store.create_run(run=make_run("r2", thread_id="t2", created_at=20))
    store.create_run(run=make_run("r4", status=RunStatus.DONE, thread_id="t2", created_at=40))
    store.create_run(run=make_run("r5", status=RunStatus.WAITING, created_at=50))

    page = store.list_runs()
    assert [r.run_id for r in page.items] == ["r1", "r2", "r3", "r4", "r5"]
    assert (page.total, page.has_more) == (5, False)

    assert [r.run_id for r in store.list_runs(thread_id="t1").items] == ["r1", "r3", "r5"]
    assert [r.run_id for r in store.list_runs(status=RunStatus.DONE).items] == ["r3", "r4"]
    both = store.list_runs(status=RunStatus.DONE, thread_id="t2")
    assert [r.run_id for r in both.items] == ["r4"] and both.total == 1
    assert store.list_runs(thread_id="nobody").items == []

    first = store.list_runs(limit=2)
    assert [r.run_id for r in first.items] == ["r1", "r2"] and (first.total, first.has_more) == (5, True)
    middle = store.list_runs(limit=2, offset=2)
    assert [r.run_id for r in middle.items] == ["r3", "r4"] and middle.has_more is True
    last = store.list_runs(limit=2, offset=4)
    assert [r.run_id for r in last.items] == ["r5"] and last.has_more is False
    beyond = store.list_runs(limit=2, offset=10)
    assert beyond.items == [] and (beyond.total, beyond.has_more) == (5, False)
    negative = store.list_runs(limit=2, offset=-3)
    assert [r.run_id for r in negative.items] == ["r1", "r2"]

    # limit is clamped to 1..200
    assert [r.run_id for r in store.list_runs(limit=0).items] == ["r1"]
    assert [r.run_id for r in store.list_runs(limit=-5).items] == ["r1"]


def test_list_runs_limit_is_clamped_to_200() -> None:
    Thread.objects.create(id="bulk", created_at=1, updated_at=1)
    Run.objects.bulk_create(
        [Run(run_id=f"r{i:03d}", thread_id="bulk", created_at=i, updated_at=i) for i in range(205)]
    )
    page = store.list_runs(limit=1000)
    assert len(page.items) == 200
    assert (page.total, page.has_more) == (205, True)
    assert page.items[0].run_id == "r000" and page.items[-1].run_id == "r199"
    rest = store.list_runs(limit=1000, offset=200)
    assert [r.run_id for r in rest.items] == [f"r{i}" for i in range(200, 205)]
    assert rest.has_more is False


# --- checkpoint: the thread projection of §1.9 ------------------------------------------------------


def test_checkpoint_created_sets_open_and_clears_active() -> None:
    store.checkpoint(thread_id="t1", messages=[], run=make_run("r-old", status=RunStatus.RUNNING), now=NOW)
    assert thread_pointers("t1") == ("r-old", "r-old", "r-old")

    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1", status=RunStatus.CREATED), now=NOW)

    assert thread_pointers("t1") == (None, "r1", "r1")


def test_checkpoint_running_sets_active_and_open() -> None:
    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1"), now=NOW)
    assert thread_pointers("t1") == (None, "r1", "r1")

    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1", status=RunStatus.RUNNING), now=NOW)

    assert thread_pointers("t1") == ("r1", "r1", "r1")


def test_checkpoint_waiting_keeps_the_run_open_but_not_active() -> None:
    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1", status=RunStatus.RUNNING), now=NOW)

    waiting = make_run("r1", status=RunStatus.WAITING, waiting=RunWaitingState(reason="user_input"))
    store.checkpoint(thread_id="t1", messages=[], run=waiting, now=NOW)

    assert thread_pointers("t1") == (None, "r1", "r1")
    assert store.load_run(run_id="r1") == waiting


def test_checkpoint_done_clears_pointers_that_point_at_the_run() -> None:
    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1", status=RunStatus.RUNNING), now=NOW)

    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1", status=RunStatus.DONE), now=NOW)

    assert thread_pointers("t1") == (None, None, "r1")


def test_checkpoint_done_leaves_pointers_to_other_runs() -> None:
    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1", status=RunStatus.RUNNING), now=NOW)

    store.checkpoint(thread_id="t1", messages=[], run=make_run("r2", status=RunStatus.DONE), now=NOW)

    assert thread_pointers("t1") == ("r1", "r1", "r2")


@pytest.mark.parametrize(
    ("done_run", "expected_active", "expected_open"),
    [("r-active", None, "r-open"), ("r-open", "r-active", None), ("r-third", "r-active", "r-open")],
)
def test_checkpoint_done_clears_active_and_open_independently(
    done_run: str, expected_active: str | None, expected_open: str | None
) -> None:
    for run_id in ("r-active", "r-open", "r-third"):
        store.create_run(run=make_run(run_id, status=RunStatus.RUNNING))
    set_pointers("t1", active="r-active", open_="r-open")

    store.checkpoint(thread_id="t1", messages=[], run=make_run(done_run, status=RunStatus.DONE), now=NOW)

    assert thread_pointers("t1") == (expected_active, expected_open, done_run)


def test_checkpoint_takes_parent_thread_from_the_request_once() -> None:
    request = RunRequestSnapshot(parent_thread_id="  parent-1  ")
    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1", request=request), now=NOW)
    thread = store.load_thread(thread_id="t1")
    assert thread is not None and thread.parent_thread_id == "parent-1"

    # an existing parent is never replaced
    other = RunRequestSnapshot(parent_thread_id="parent-2")
    store.checkpoint(thread_id="t1", messages=[], run=make_run("r2", request=other), now=NOW)
    thread = store.load_thread(thread_id="t1")
    assert thread is not None and thread.parent_thread_id == "parent-1"

    # blank parent ids stay null
    blank = RunRequestSnapshot(parent_thread_id="   ")
    store.checkpoint(thread_id="t2", messages=[], run=make_run("r3", thread_id="t2", request=blank), now=NOW)
    thread = store.load_thread(thread_id="t2")
    assert thread is not None and thread.parent_thread_id is None


def test_checkpoint_appends_messages_upserts_the_run_and_touches_the_thread() -> None:
    run = make_run("r1", status=RunStatus.CREATED)
    records = store.checkpoint(thread_id="t1", messages=[user("hi", "m1")], run=run, now=NOW)
    assert [(r.seq, r.message_id) for r in records] == [(1, "m1")]
    thread = store.load_thread(thread_id="t1")
    assert thread is not None and (thread.created_at, thread.updated_at) == (NOW, NOW)

    # the runtime checkpoints its whole transcript: known messages are skipped, history is kept
    running = make_run("r1", status=RunStatus.RUNNING, dispatch_id="d1", session_id="s1", started_at=2000)
    records = store.checkpoint(
        thread_id="t1",
        messages=[user("hi (rewritten)", "m1"), ChatMessage.assistant("hello", id="m2")],
        run=running,
        now=NOW + 10,
    )
    assert [(r.seq, r.message_id) for r in records] == [(2, "m2")]
    loaded = store.load_messages(thread_id="t1")
    assert loaded is not None and [m.text for m in loaded] == ["hi", "hello"]
    assert store.load_run(run_id="r1") == running
    thread = store.load_thread(thread_id="t1")
    assert thread is not None and (thread.created_at, thread.updated_at) == (NOW, NOW + 10)
    assert thread.message_count == 2


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (RunStatus.CREATED, RunStatus.CREATED),
        (RunStatus.CREATED, RunStatus.RUNNING),
        (RunStatus.CREATED, RunStatus.DONE),
        (RunStatus.RUNNING, RunStatus.WAITING),
        (RunStatus.RUNNING, RunStatus.DONE),
        (RunStatus.WAITING, RunStatus.RUNNING),
        (RunStatus.WAITING, RunStatus.DONE),
        (RunStatus.DONE, RunStatus.DONE),
    ],
)
def test_checkpoint_accepts_allowed_run_transitions(source: RunStatus, target: RunStatus) -> None:
    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1", status=source), now=NOW)
    store.checkpoint(thread_id="t1", messages=[], run=make_run("r1", status=target, steps=1), now=NOW)
    loaded = store.load_run(run_id="r1")
    assert loaded is not None and loaded.status is target and loaded.steps == 1


def _snapshot(thread_id: str) -> tuple[Any, ...]:
    thread = store.load_thread(thread_id=thread_id)
    messages = list(Message.objects.filter(thread_id=thread_id).order_by("seq").values())
    runs = list(Run.objects.order_by("run_id").values())
    return thread, messages, runs


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (RunStatus.DONE, RunStatus.RUNNING),
        (RunStatus.DONE, RunStatus.WAITING),
        (RunStatus.DONE, RunStatus.CREATED),
        (RunStatus.RUNNING, RunStatus.CREATED),
        (RunStatus.WAITING, RunStatus.CREATED),
    ],
)
def test_rejected_transition_checkpoint_writes_nothing(source: RunStatus, target: RunStatus) -> None:
    store.checkpoint(
        thread_id="t1",
        messages=[user("before", "m1")],
        run=make_run("r1", status=source, final_output="kept"),
        now=NOW,
    )
    before = _snapshot("t1")

    with pytest.raises(InvalidInput):
        store.checkpoint(
            thread_id="t1",
            messages=[user("after", "m2")],
            run=make_run("r1", status=target, final_output="changed"),
            now=NOW + 50,
        )

    assert _snapshot("t1") == before
    run = store.load_run(run_id="r1")
    assert run is not None and run.status is source and run.final_output == "kept"
    assert store.load_message_record(thread_id="t1", message_id="m2") is None


def test_checkpoint_of_a_run_declaring_another_thread_writes_nothing() -> None:
    with pytest.raises(InvalidInput):
        store.checkpoint(
            thread_id="t-new", messages=[user("x", "m1")], run=make_run("r1", thread_id="t1"), now=NOW
        )
    assert store.load_thread(thread_id="t-new") is None
    assert store.load_thread(thread_id="t1") is None
    assert store.load_run(run_id="r1") is None
    assert Message.objects.count() == 0


def test_checkpoint_of_a_run_stored_on_another_thread_writes_nothing() -> None:
    original = make_run("r1", thread_id="t1", status=RunStatus.RUNNING)
    store.checkpoint(thread_id="t1", messages=[user("a", "m1")], run=original, now=NOW)
    before = _snapshot("t1")

    with pytest.raises(InvalidInput):
        store.checkpoint(
            thread_id="t2",
            messages=[user("stolen", "m2")],
            run=make_run("r1", thread_id="t2", status=RunStatus.DONE),
            now=NOW + 1,
        )

    assert _snapshot("t1") == before
    assert store.load_run(run_id="r1") == original
    assert store.load_thread(thread_id="t2") is None
    assert store.load_messages(thread_id="t2") is None


# --- RunRecord derived predicates (§1.8) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "expected_reason"),
    [
        (RunStatus.WAITING, "tool_permission", "tool_permission"),
        (RunStatus.WAITING, "background_tasks", "background_tasks"),
        (RunStatus.WAITING, None, None),
        (RunStatus.RUNNING, "user_input", None),
        (RunStatus.DONE, "background_tasks", None),
        (RunStatus.CREATED, "manual_pause", None),
    ],
)
def test_run_record_waiting_predicates(
    status: RunStatus, reason: str | None, expected_reason: str | None
) -> None:
    waiting = None if reason is None else RunWaitingState(reason=reason, ticket_ids=["t"])
    run = make_run("r1", status=status, waiting=waiting)

    assert run.waiting_reason() == expected_reason
    assert run.is_resumable_waiting is (expected_reason is not None)
    assert run.is_background_task_waiting is (expected_reason == "background_tasks")

    # the predicates survive a round trip through the store
    store.create_run(run=run)
    loaded = store.load_run(run_id="r1")
    assert loaded is not None
    assert loaded.waiting_reason() == expected_reason
    assert loaded.is_background_task_waiting is (expected_reason == "background_tasks")
