"""Durable steps: a step runs at most once per run and key; a re-run attempt resumes, it does not restart.

In-process tests drive the journal against real PostgreSQL and Redis (a real claimed dispatch, a real
in-process Celery worker). The crash tests spawn real `celery worker` subprocesses with the machinery
of test_multiprocess.py: kill -9 of a whole worker between two steps, and a SIGSTOPped worker resumed
after the re-run finished.
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import pytest
import redis
from django.db import connection
from django.test import Client

from mailbox_app import store
from mailbox_app.agents.base import (
    RunContext,
    RunResult,
    StepNotRecorded,
    StepOutput,
    StepResultNotJSON,
    run_tool_call,
)
from mailbox_app.agents.echo import step_key, steps_log_key
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.realtime import events
from mailbox_app.realtime.redis_client import get_redis
from mailbox_app.services import mailbox, maintenance
from mailbox_app.store.runs_tables.steps import STEP_RECORDED, STEP_REPLAYED, StepJournal
from runs_app import store as run_store
from runs_app.models import RunStep
from tests.support.agents import TEST_AGENTS
from tests.support.dispatches import FAST
from tests.support.waiting import wait_until
from tests.support.worker_farm import (
    WorkerFarm,
    dispatch_of,
    echo_request,
    probe_workers,
    run_of,
    signal_group,
    sweep_until,
    wait_run_status,
)

pytestmark = pytest.mark.django_db(transaction=True)

CALLS: list[str] = []
CALLS_LOCK = threading.Lock()


def _called(what: str) -> None:
    with CALLS_LOCK:
        CALLS.append(what)


def _journal_rows(run_id: str) -> list[dict[str, Any]]:
    return [dict(row) for row in RunStep.objects.filter(run_id=run_id).order_by("id").values()]


def _keys(run_id: str) -> list[str]:
    return [row["key"] for row in _journal_rows(run_id)]


# --- agents (test doubles of the executor only) ------------------------------------------------------


class TwiceAgent:
    """Calls one step key twice in one attempt."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        def draw(idempotency_key: str) -> dict[str, Any]:
            _called(idempotency_key)
            return {"drawn": len(CALLS), "key": idempotency_key}

        first = context.step("draw", draw)
        second = context.step("draw", draw)
        return RunResult(final_output=json.dumps([first, second]))


class UnserialisableAgent:
    """One good step, then a step whose result is a set."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        context.step("good", lambda _key: {"ok": True})
        context.step("bad", lambda _key: {1, 2})
        return RunResult(final_output="unreachable")


class ToolAgent:
    """The same tool call run twice (a re-run of the agent code in one attempt): the tool runs once; the
    step's messages and state are kept with the journal."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        def search(idempotency_key: str, query: str) -> StepOutput:
            _called(f"search {query}")
            reply = ChatMessage.model_validate(
                {"role": "tool", "content": f"found {query}", "tool_call_id": "call-1"}
            )
            return StepOutput({"hits": 1}, messages=(reply,), state={"searched": query})

        first = run_tool_call(context, "call-1", "search", search, "cats")
        again = run_tool_call(context, "call-1", "search", search, "cats")
        assert first == again
        journal = context.journal()
        return RunResult(final_output=f"{first.result} {journal.state}", messages=journal.messages)


STEP_AGENTS = {
    **TEST_AGENTS,
    "twice": f"{__name__}.TwiceAgent",
    "unserialisable": f"{__name__}.UnserialisableAgent",
    "tool": f"{__name__}.ToolAgent",
}


@pytest.fixture
def step_agents(engine_settings: Any) -> Any:
    engine_settings.AWAKEN_AGENTS = STEP_AGENTS
    CALLS.clear()
    return engine_settings


# --- the fenced record, against a real claimed dispatch ----------------------------------------------


def _claimed(thread_id: str) -> DispatchRecord:
    """A background submit on an idle thread claims its dispatch inline; no worker runs here."""
    submitted = mailbox.submit_background(echo_request(thread_id, "hello", agent_id="noop"))
    dispatch = store.load_dispatch(submitted.dispatch_id)
    assert dispatch is not None and dispatch.status is DispatchStatus.CLAIMED and dispatch.claim_token
    return dispatch


def _journal(
    dispatch: DispatchRecord, session_id: str, emitted: list[tuple[str, dict[str, Any]]]
) -> StepJournal:
    return StepJournal(
        run_id=dispatch.run_id,
        dispatch_id=dispatch.dispatch_id,
        claim_token=dispatch.claim_token or "",
        session_id=session_id,
        emit=lambda kind, data: emitted.append((kind, data)),
        lease_lost=threading.Event(),
    )


def test_a_step_is_recorded_once_and_replayed_with_its_idempotency_key(
    engine_settings: Any, clean_redis: redis.Redis
) -> None:
    dispatch = _claimed("t-steps-record")
    emitted: list[tuple[str, dict[str, Any]]] = []
    journal = _journal(dispatch, "session-1", emitted)
    keys: list[str] = []

    def charge(idempotency_key: str, amount: int) -> dict[str, Any]:
        keys.append(idempotency_key)
        return {"charged": amount, "tags": ("a", "b")}

    first = journal.step("charge", charge, 5)
    second = journal.step("charge", charge, 7)
    # the JSON round trip on the first call too: both calls see the same value
    assert first == second == {"charged": 5, "tags": ["a", "b"]}
    assert keys == [f"{dispatch.run_id}:charge"]
    assert [kind for kind, _ in emitted] == [STEP_RECORDED, STEP_REPLAYED]
    [row] = _journal_rows(dispatch.run_id)
    assert row["key"] == "charge" and row["dispatch_id"] == dispatch.dispatch_id
    assert row["session_id"] == "session-1" and row["attempt"] == 1
    assert row["result"] == first and row["messages"] is None
    assert row["result_bytes"] == len(json.dumps(first, separators=(",", ":")))

    # another attempt's view of the same journal (read from PostgreSQL) replays it without calling fn
    later = _journal(dispatch, "session-2", emitted)
    assert later.step("charge", charge, 9) == first
    assert keys == [f"{dispatch.run_id}:charge"]
    assert later.journal().get("charge") is not None


def test_an_attempt_that_lost_its_claim_records_nothing_and_overwrites_nothing(
    engine_settings: Any, clean_redis: redis.Redis
) -> None:
    dispatch = _claimed("t-steps-fence")
    emitted: list[tuple[str, dict[str, Any]]] = []
    zombie = _journal(dispatch, "session-zombie", emitted)
    assert zombie.step("one", lambda _key: "by the zombie") == "by the zombie"

    # the lease expires and the sweep reclaims the dispatch; a new attempt claims it with a new token
    [reclaimed] = store.reclaim_expired_leases(now_ms() + FAST.lease_ms * 10)
    assert reclaimed.status is DispatchStatus.QUEUED
    with pytest.raises(StepNotRecorded, match="lost its claim"):
        zombie.step("two", lambda _key: "by the zombie")
    [again] = store.claim(dispatch.thread_id, "test-consumer", FAST.lease_ms, now_ms() + FAST.lease_ms * 10)
    assert again.dispatch_id == dispatch.dispatch_id and again.claim_token != dispatch.claim_token
    live = _journal(again, "session-live", emitted)
    assert live.step("one", lambda _key: "by the live attempt") == "by the zombie"  # replayed
    assert live.step("two", lambda _key: "by the live attempt") == "by the live attempt"
    before = _journal_rows(dispatch.run_id)
    assert [(r["key"], r["attempt"], r["session_id"]) for r in before] == [
        ("one", 1, "session-zombie"),
        ("two", 2, "session-live"),
    ]

    # the zombie, on a fresh view of the journal: a recorded key replays, a new key is refused
    resumed = _journal(dispatch, "session-zombie", emitted)
    assert resumed.step("two", lambda _key: "overwrite?") == "by the live attempt"
    with pytest.raises(StepNotRecorded):
        resumed.step("three", lambda _key: "by the zombie")

    # an interrupt bumps the epoch: the live attempt's claim is stale, it records nothing either
    mailbox.interrupt(dispatch.thread_id)
    with pytest.raises(StepNotRecorded):
        live.step("three", lambda _key: "after the interrupt")
    assert _journal_rows(dispatch.run_id) == before


def test_a_non_json_step_result_fails_with_a_clear_error_and_records_nothing(
    engine_settings: Any, clean_redis: redis.Redis
) -> None:
    dispatch = _claimed("t-steps-json")
    journal = _journal(dispatch, "session-1", [])
    with pytest.raises(StepResultNotJSON, match=r"step 'bad': its result is not JSON-serialisable.*set"):
        journal.step("bad", lambda _key: {1, 2})
    with pytest.raises(StepResultNotJSON, match=r"step 'nan': its result"):
        journal.step("nan", lambda _key: float("nan"))
    with pytest.raises(StepResultNotJSON, match=r"step 'state': its state"):
        journal.step("state", lambda _key: StepOutput("fine", state={"when": object()}))
    assert _journal_rows(dispatch.run_id) == []
    assert journal.step("bad", lambda _key: [1, 2]) == [1, 2]  # the key was never taken


# --- through a real worker ---------------------------------------------------------------------------


def test_two_steps_with_one_key_in_one_attempt_get_the_first_result(
    mailbox_worker: Any, step_agents: Any
) -> None:
    submitted = mailbox.submit_background(echo_request("t-steps-twice", "go", agent_id="twice"))
    run = wait_run_status(submitted.run_id, RunStatus.DONE)
    first, second = json.loads(run.final_output or "")
    assert first == second == {"drawn": 1, "key": f"{submitted.run_id}:draw"}
    assert [f"{submitted.run_id}:draw"] == CALLS
    assert _keys(submitted.run_id) == ["draw"]
    kinds = [e.type for e in events.read_events(submitted.run_id)]
    assert [k for k in kinds if k.startswith("step_")] == [STEP_RECORDED, STEP_REPLAYED]


def test_a_non_json_step_result_ends_the_run_with_the_error_and_no_half_journal(
    mailbox_worker: Any, step_agents: Any
) -> None:
    submitted = mailbox.submit_background(
        echo_request("t-steps-unserialisable", "go", agent_id="unserialisable")
    )
    run = wait_run_status(submitted.run_id, RunStatus.DONE)
    assert run.termination_reason is not None and run.termination_reason.type == "error"
    assert "step 'bad': its result is not JSON-serialisable" in (run.termination_reason.value or "")
    acked = wait_until(
        lambda: (d := store.load_dispatch(submitted.dispatch_id)) and d.status is DispatchStatus.ACKED and d,
        what="acked (not retried)",
    )
    assert acked.attempt_count == 0
    assert _keys(submitted.run_id) == ["good"]


def test_a_tool_call_runs_once_and_its_messages_and_state_are_kept_with_the_journal(
    mailbox_worker: Any, step_agents: Any
) -> None:
    submitted = mailbox.submit_background(echo_request("t-steps-tool", "go", agent_id="tool"))
    run = wait_run_status(submitted.run_id, RunStatus.DONE)
    assert CALLS == ["search cats"]
    assert run.final_output == "{'hits': 1} {'searched': 'cats'}"
    [row] = _journal_rows(submitted.run_id)
    assert row["key"] == "tool_call:call-1" and row["state"] == {"searched": "cats"}
    texts = [m.text for m in run_store.load_messages(thread_id=submitted.thread_id) or []]
    assert texts == ["go", "found cats"]
    kinds = [e.type for e in events.read_events(submitted.run_id)]
    assert kinds.count("tool_call_start") == kinds.count("tool_call_done") == 1
    assert kinds.count(STEP_REPLAYED) == 1


def test_a_decision_is_recorded_as_the_suspended_calls_step(mailbox_worker: Any, step_agents: Any) -> None:
    asked = mailbox.submit_background(echo_request("t-steps-ask", "ask ok?"))
    waiting = wait_run_status(asked.run_id, RunStatus.WAITING)
    assert waiting.waiting is not None
    [call_id] = waiting.waiting.ticket_ids
    assert call_id == f"call-{asked.dispatch_id}"
    resume = ToolCallResume(decision_id="d-1", action="resume", result={"ok": 1})
    assert mailbox.send_decision(mailbox.RunTarget(asked.run_id), call_id, resume)
    done = wait_run_status(asked.run_id, RunStatus.DONE)
    assert done.final_output == 'approved: {"ok": 1}'
    [row] = _journal_rows(asked.run_id)
    assert row["key"] == f"tool_call:{call_id}"
    assert ToolCallResume.model_validate(row["result"]) == resume


def test_echo_steps_runs_each_step_once(mailbox_worker: Any, step_agents: Any) -> None:
    submitted = mailbox.submit_background(echo_request("t-steps-echo", "steps 2"))
    run = wait_run_status(submitted.run_id, RunStatus.DONE, timeout=20)
    assert run.final_output == "steps done: 2 steps, 2 executions"
    assert _keys(submitted.run_id) == [step_key(_turn(submitted.run_id), i) for i in (1, 2)]


# --- GC and the admin --------------------------------------------------------------------------------


def test_gc_removes_the_journals_of_long_done_runs_and_a_deleted_run_takes_its_journal(
    mailbox_worker: Any, step_agents: Any
) -> None:
    done = mailbox.submit_background(echo_request("t-steps-gc", "go", agent_id="twice"))
    wait_run_status(done.run_id, RunStatus.DONE)
    other = mailbox.submit_background(echo_request("t-steps-gc-2", "go", agent_id="twice"))
    wait_run_status(other.run_id, RunStatus.DONE)
    assert _keys(done.run_id) == _keys(other.run_id) == ["draw"]

    maintenance.gc(now=now_ms())  # within the TTL: kept
    assert _keys(done.run_id) == ["draw"]
    maintenance.gc(now=now_ms() + FAST.gc_ttl_ms + 1_000)
    assert _keys(done.run_id) == _keys(other.run_id) == []

    kept = mailbox.submit_background(echo_request("t-steps-gc-3", "go", agent_id="twice"))
    wait_run_status(kept.run_id, RunStatus.DONE)
    with connection.cursor() as cursor:  # a run deleted by SQL, not the ORM: the database cascades
        cursor.execute("DELETE FROM runs_run WHERE run_id = %s", [kept.run_id])
    assert _keys(kept.run_id) == []


def test_the_run_admin_shows_its_journal(mailbox_worker: Any, step_agents: Any, admin_client: Client) -> None:
    submitted = mailbox.submit_background(echo_request("t-steps-admin", "go", agent_id="twice"))
    wait_run_status(submitted.run_id, RunStatus.DONE)
    [row] = _journal_rows(submitted.run_id)
    page = admin_client.get(f"/admin/runs_app/run/{submitted.run_id}/change/").content.decode()
    assert "Journaled steps" in page and "<p>draw</p>" in page
    assert "1 of <a href" in page and submitted.dispatch_id in page
    assert f"{row['result_bytes']} B" in page


# --- crashes across real worker processes ------------------------------------------------------------


def _turn(run_id: str) -> str:
    """The id of the message that asked a run's steps: echo's step keys name it (stable across attempts)."""
    run = run_of(run_id)
    assert run.input is not None
    return run.input.trigger_message_ids[-1]


def _log(run_id: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in get_redis().lrange(steps_log_key(run_id), 0, -1)]


@pytest.mark.slow
def test_kill_9_between_steps_2_and_3_resumes_at_step_3(farm: WorkerFarm) -> None:
    """`steps 4` on one worker; once steps 1–2 are recorded (step 3's body is in its one-second wait,
    before its side effect), the whole worker is killed with SIGKILL. The sweep reclaims the dispatch and
    a second worker re-runs it: steps 1–2 are replayed, 3–4 executed, k == 4."""
    doomed = farm.spawn("w-doomed", pool="threads")
    survivor = farm.spawn("w-survivor", pool="threads", standby=True)
    farm.wait_ready(doomed, survivor)
    probe_workers()
    submitted = mailbox.submit_background(echo_request("t-steps-kill", "steps 4"))
    wait_until(
        lambda: len(_keys(submitted.run_id)) >= 2, timeout=20, interval=0.01, what="steps 1-2 recorded"
    )
    doomed.kill_group()
    assert len(_keys(submitted.run_id)) == 2, "killed between steps 2 and 3"
    first_session = _journal_rows(submitted.run_id)[0]["session_id"]
    farm.join(survivor)

    acked = sweep_until(submitted.dispatch_id, DispatchStatus.ACKED, timeout=40)
    assert acked.attempt_count == 1
    run = run_of(submitted.run_id)
    assert run.status is RunStatus.DONE and run.final_output == "steps done: 4 steps, 4 executions"
    # usage (words as tokens): the dead attempt's two steps are listed as its own (it never finished),
    # the re-run's two steps and its reply ("steps 4" in, six words out) as the finishing attempt's; the
    # steps it replayed are not counted again
    attempts = run.usage_attempts
    listed = [(a.dispatch_id, a.attempt, a.ended, a.input_tokens, a.output_tokens) for a in attempts]
    dispatch_id = submitted.dispatch_id
    assert listed == [(dispatch_id, 1, "lost", 2, 2), (dispatch_id, 2, "finished", 4, 8)]
    assert (run.input_tokens, run.output_tokens) == (6, 10)
    second_session = acked.dispatch_instance_id
    assert second_session not in (None, first_session)
    # the side-effect log: steps 1-2 executed by the dead attempt, 3-4 by the re-run, none twice
    assert [(e["step"], e["session_id"]) for e in _log(submitted.run_id)] == [
        (1, first_session),
        (2, first_session),
        (3, second_session),
        (4, second_session),
    ]
    rows = _journal_rows(submitted.run_id)
    keys = [step_key(_turn(submitted.run_id), i) for i in (1, 2, 3, 4)]
    assert [(r["key"], r["attempt"], r["session_id"]) for r in rows] == [
        (keys[0], 1, first_session),
        (keys[1], 1, first_session),
        (keys[2], 2, second_session),
        (keys[3], 2, second_session),
    ]
    stream = [(e.type, e.data.get("key")) for e in events.read_events(submitted.run_id)]
    rerun = stream[[i for i, (kind, _) in enumerate(stream) if kind == "run_start"][1] :]
    assert [s for s in rerun if s[0].startswith("step_")] == [
        (STEP_REPLAYED, keys[0]),
        (STEP_REPLAYED, keys[1]),
        (STEP_RECORDED, keys[2]),
        (STEP_RECORDED, keys[3]),
    ]
    assert [kind for kind, _ in stream].count("run_finish") == 1


@pytest.mark.slow
def test_a_zombie_attempt_resumed_after_the_rerun_records_and_overwrites_no_step(farm: WorkerFarm) -> None:
    """`steps 3` on a solo worker, SIGSTOPped once step 1 is recorded (inside step 2's wait) and held past
    its lease; the sweep reclaims and a second worker re-runs to done. The second worker is killed and the
    first resumed: its step 2 cannot be recorded (the key is taken and its claim is gone), and the journal,
    the run and its events are exactly what the re-run left. A marker on the solo worker proves the
    zombie's attempt is over."""
    paused = farm.start("w-paused", pool="solo")
    probe_workers()
    submitted = mailbox.submit_background(echo_request("t-steps-zombie", "steps 3"))
    wait_until(lambda: len(_keys(submitted.run_id)) >= 1, timeout=20, interval=0.01, what="step 1 recorded")
    signal_group(paused.pgid, signal.SIGSTOP)
    try:
        zombie_session = _journal_rows(submitted.run_id)[0]["session_id"]
        live = farm.start("w-live", pool="threads")
        acked = sweep_until(submitted.dispatch_id, DispatchStatus.ACKED, timeout=40)
        run = run_of(submitted.run_id)
        assert run.final_output == "steps done: 3 steps, 3 executions"
        journal = _journal_rows(submitted.run_id)
        assert [(r["attempt"], r["session_id"]) for r in journal] == [
            (1, zombie_session),
            (2, acked.dispatch_instance_id),
            (2, acked.dispatch_instance_id),
        ]
        stream = [(e.id, e.type, e.data) for e in events.read_events(submitted.run_id)]
        executions = _log(submitted.run_id)
        live.kill_group()
    finally:
        signal_group(paused.pgid, signal.SIGCONT)
    marker = mailbox.submit_background(echo_request("t-steps-zombie-marker", "marker"))
    sweep_until(marker.dispatch_id, DispatchStatus.ACKED, timeout=30)
    assert paused.alive()
    assert _journal_rows(submitted.run_id) == journal
    assert run_of(submitted.run_id) == run
    assert [(e.id, e.type, e.data) for e in events.read_events(submitted.run_id)] == stream
    assert dispatch_of(submitted.dispatch_id) == acked
    # the one limit: the zombie may have finished the body of the step it was paused in (or seen its
    # lost lease first); it ran nothing after it
    extra = _log(submitted.run_id)[len(executions) :]
    assert [(e["step"], e["session_id"]) for e in extra] in ([], [(2, zombie_session)])
