"""The fenced core: an attempt that lost its claim writes nothing anywhere; each transition is one
transaction; acknowledged live commands are acted on; every way a run ends emits its end.

In-process and deterministic: attempts run on real threads against real PostgreSQL and Redis, held at
named steps by agents that wait on events (no sleep-and-hope). The multi-process counterparts (a
SIGSTOPped worker, commands across `celery worker` processes) are in test_multiprocess.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from redis.exceptions import ConnectionError as RedisConnectionError

from mailbox_app import store
from mailbox_app.agents.base import COMPLETED, InferenceFailed, RunContext, RunResult
from mailbox_app.contract.config import MailboxConfig
from mailbox_app.contract.ids import consumer_id, now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, LiveRunTarget, RunDispatchResult
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.realtime import doorbells, events
from mailbox_app.realtime.locks import ThreadLock
from mailbox_app.services import mailbox, maintenance
from mailbox_app.worker import attempt, execution, lease
from runs_app import store as run_store
from tests.support.dispatches import FAST
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Gate:
    """Holds an agent at a point until released (and tells the test it got there)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()


GATE = Gate()


class ZombieAgent:
    """First call: emits, blocks on the gate, emits again, replies. Later calls reply at once."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        with GATE.lock:
            GATE.calls += 1
            first = GATE.calls == 1
        text = "first attempt" if first else "second attempt"
        context.emit("text_delta", {"delta": f"{text} begins"})
        if first:
            GATE.reached.set()
            assert GATE.release.wait(30)
        context.emit("text_delta", {"delta": f"{text} ends"})
        return RunResult(final_output=text, messages=(ChatMessage.assistant(text),))


class SlowAgent:
    """Works past several lease lengths (cancellable), then replies."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        GATE.reached.set()
        if context.wait_cancelled(FAST.lease_ms * 2.5 / 1000):
            return RunResult(final_output="cancelled")
        return RunResult(final_output="outlived the lease", messages=(ChatMessage.assistant("done"),))


class DecisionThenFailAgent:
    """First call: holds at the gate (a decision arrives live meanwhile, never taken), then fails
    transiently. Later calls: report the decisions the retry delivered."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        if request.decisions:
            return RunResult(
                final_output="retry got " + ",".join(f"{c}:{r.action}" for c, r in request.decisions)
            )
        GATE.reached.set()
        assert GATE.release.wait(30)
        raise InferenceFailed("scripted: model unavailable")


@pytest.fixture
def fenced(engine_settings: Any, clean_redis: Any) -> Iterator[Any]:
    engine_settings.AWAKEN_AGENTS = {
        **engine_settings.AWAKEN_AGENTS,
        "zombie": "tests.mailbox_app.scenarios.test_fenced_core.ZombieAgent",
        "slow": "tests.mailbox_app.scenarios.test_fenced_core.SlowAgent",
        "decision-then-fail": "tests.mailbox_app.scenarios.test_fenced_core.DecisionThenFailAgent",
    }
    global GATE
    GATE = Gate()
    yield engine_settings
    GATE.release.set()
    execution.step_hook.clear()


def _request(thread_id: str, text: str, agent: str = "echo") -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], agent_id=agent)


def _claimed(thread_id: str, dispatch_id: str) -> Any:
    loaded = store.load_dispatch(dispatch_id)
    assert loaded is not None and loaded.status is DispatchStatus.CLAIMED, loaded
    return loaded


def _decided(target: Any, call_id: str, resume: ToolCallResume) -> bool:
    """`mailbox.send_decision`, answered as whether the decision reached its run."""
    return mailbox.send_decision(target, call_id, resume) is not None


def _in_thread(target: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(target(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            out.append(exc)
        finally:
            connection.close()

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    return worker, out


def _snapshot(thread_id: str, run_id: str) -> tuple[Any, ...]:
    run = run_store.load_run(run_id=run_id)
    thread = run_store.load_thread(thread_id=thread_id)
    messages, _ = run_store.list_message_records(thread_id=thread_id, limit=200, include_internal=True)
    return (
        None if run is None else run.model_dump_json(),
        None if thread is None else thread.model_dump_json(),
        [m.model_dump_json() for m in messages],
        [(e.id, e.type, e.data) for e in events.read_events(run_id)],
    )


def _texts(thread_id: str) -> list[str]:
    return [m.text for m in run_store.load_messages(thread_id=thread_id) or []]


def _finishes(run_id: str) -> list[dict[str, Any]]:
    return [e.data for e in events.read_events(run_id) if e.type == events.RUN_FINISH]


# --- zombie attempts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(3))
def test_a_paused_attempt_resumed_after_reclaim_writes_nothing_anywhere(
    fenced: Any, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    """A worker paused past its lease (here: its renewer held off, as SIGSTOP does) resumes after the
    sweep reclaimed its claim and another attempt re-ran and acked it: the run record, the thread, the
    message log and the event stream are byte-for-byte what the live attempt left."""
    # a paused process renews nothing: its renewer holds every lease and renews none
    monkeypatch.setattr(lease.Renewer, "renew_due", lambda self, now: None)
    thread_id = f"t-zombie-{round_}"
    submitted = mailbox.submit_background(_request(thread_id, "hello", agent="zombie"))
    zombie, zombie_out = _in_thread(execution.execute_claimed, _claimed(thread_id, submitted.dispatch_id))
    assert GATE.reached.wait(15)

    # the lease runs out while the zombie is paused: the sweep reclaims it and a live attempt runs
    report = maintenance.sweep(now=now_ms() + FAST.lease_ms + 1)
    assert report.reclaimed == 1
    assert execution.drain_thread(thread_id) is execution.DispatchAttempt.CLAIMED
    acked = store.load_dispatch(submitted.dispatch_id)
    assert acked is not None and acked.status is DispatchStatus.ACKED and acked.attempt_count == 1
    settled = _snapshot(thread_id, submitted.run_id)
    assert _texts(thread_id) == ["hello", "second attempt"]

    GATE.release.set()  # the zombie resumes: its agent returns and it tries to finish
    zombie.join(15)
    assert zombie_out and zombie_out[0].final_status == "acked", zombie_out  # it knows: lost
    assert _snapshot(thread_id, submitted.run_id) == settled
    assert store.load_dispatch(submitted.dispatch_id) == acked


def test_a_renewer_whose_redis_calls_fail_keeps_the_lease_and_the_run_completes(
    fenced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Redis lock renewal raises; the renewer counts the failures, keeps renewing the PostgreSQL
    lease, and the run outlives several lease lengths while sweeps run, acked on its first attempt."""
    helds: list[lease.Held] = []
    original_hold = lease.Renewer.hold

    def failing_extend_all(locks: list[tuple[ThreadLock, int]]) -> list[bool]:
        raise RedisConnectionError("scripted: redis unreachable")

    def recording_hold(self: lease.Renewer, dispatch: Any, lock: ThreadLock, active: Any) -> lease.Held:
        held = original_hold(self, dispatch, lock, active)
        helds.append(held)
        return held

    monkeypatch.setattr(lease, "extend_all", failing_extend_all)
    monkeypatch.setattr(lease.Renewer, "hold", recording_hold)
    thread_id = "t-renewer-redis"
    submitted = mailbox.submit_background(_request(thread_id, "go", agent="slow"))
    worker, out = _in_thread(execution.execute_claimed, _claimed(thread_id, submitted.dispatch_id))
    assert GATE.reached.wait(15)
    while worker.is_alive():
        assert maintenance.sweep().reclaimed == 0
        worker.join(0.2)
    assert out and out[0].final_status == "acked", out
    dispatch = store.load_dispatch(submitted.dispatch_id)
    assert dispatch is not None and dispatch.attempt_count == 0
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.final_output == "outlived the lease"
    assert helds and helds[0].failures >= 3 and helds[0].renewals >= 3


def test_a_renewer_that_finds_the_lease_gone_cancels_the_run_and_settles_nothing(fenced: Any) -> None:
    thread_id = "t-lease-lost"
    submitted = mailbox.submit_background(_request(thread_id, "go", agent="slow"))
    worker, out = _in_thread(execution.execute_claimed, _claimed(thread_id, submitted.dispatch_id))
    assert GATE.reached.wait(15)
    assert maintenance.sweep(now=now_ms() + FAST.lease_ms + 1).reclaimed == 1
    worker.join(15)
    assert out and out[0].final_status == "lease_lost", out
    requeued = store.load_dispatch(submitted.dispatch_id)
    assert requeued is not None and requeued.status is DispatchStatus.QUEUED and requeued.attempt_count == 1
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.status is RunStatus.RUNNING and run.final_output is None
    assert _texts(thread_id) == ["go"]


def test_a_zombies_nack_dead_letter_lease_extension_and_finish_change_nothing(fenced: Any) -> None:
    thread_id = "t-zombie-writes"
    submitted = mailbox.submit_background(_request(thread_id, "hello"))
    stale = _claimed(thread_id, submitted.dispatch_id)
    started = attempt.start(stale, "instance-zombie", "zombie-node")
    assert isinstance(started, attempt.Started)
    maintenance.sweep(now=now_ms() + FAST.lease_ms + 1)
    assert execution.drain_thread(thread_id) is execution.DispatchAttempt.CLAIMED
    settled = (store.load_dispatch(submitted.dispatch_id), _snapshot(thread_id, submitted.run_id))

    token = stale.claim_token or ""
    trace = RunDispatchResult(run_id=stale.run_id, dispatch_instance_id="instance-zombie", status="done")
    for outcome in store.Settle:
        assert store.try_settle(stale.dispatch_id, token, outcome, trace, now_ms(), retry_at=now_ms()) is None
    assert store.extend_lease(stale.dispatch_id, token, 60_000, now_ms()) is False
    reply = RunResult(final_output="zombie", messages=(ChatMessage.assistant("zombie"),))
    lost = attempt.finish(started, COMPLETED, reply, None, cancelled=False)
    assert isinstance(lost, attempt.Lost)
    assert (store.load_dispatch(submitted.dispatch_id), _snapshot(thread_id, submitted.run_id)) == settled


# --- the live-command window (agent returned, finish not yet written) --------------------------------


def test_steering_in_the_finish_window_is_not_acknowledged_and_goes_to_the_queue(fenced: Any) -> None:
    thread_id = "t-window-steer"
    answers: list[mailbox.SubmitResult] = []

    def steer_now(active: Any) -> None:
        execution.step_hook.clear()  # once: the follow-up it queues runs without steering
        answers.append(
            mailbox.submit_live_then_queue(
                RunRequest(thread_id=thread_id, messages=[ChatMessage.user("late")])
            )
        )

    execution.step_hook["before_finish"] = steer_now
    submitted = mailbox.submit_background(_request(thread_id, "hello"))
    first = _claimed(thread_id, submitted.dispatch_id)
    execution.drain_thread(thread_id, first=first)

    assert len(answers) == 1 and answers[0].status is mailbox.SubmitStatus.QUEUED, answers
    assert answers[0].dispatch_id != submitted.dispatch_id
    follow_up = store.load_dispatch(answers[0].dispatch_id)
    assert follow_up is not None and follow_up.status is DispatchStatus.ACKED  # the drain ran it
    # the steering message entered the log while the first run was ending; its reply came from the queue
    assert _texts(thread_id) == ["hello", "late", "echo: hello", "echo: late"]


def test_a_decision_in_the_finish_window_takes_the_durable_resume_path(
    fenced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fenced.AWAKEN_LIVE_SUSPEND_HOLD_MS = 100  # held live briefly, then suspends durably
    thread_id = "t-window-decision"
    deliveries = _record_live_deliveries(monkeypatch)
    senders: list[tuple[threading.Thread, list[Any]]] = []

    def decide_now(active: Any) -> None:
        call_id = next(
            e.data["tool_call_id"] for e in events.read_events(active.run_id) if e.type == "tool_call_start"
        )
        resume = ToolCallResume(decision_id="d1", action="resume", result={"ok": True})
        execution.step_hook.clear()
        senders.append(_in_thread(_decided, mailbox.RunTarget(active.run_id), call_id, resume))
        wait_until(lambda: deliveries == [False], what="the live delivery refused")

    execution.step_hook["before_finish"] = decide_now
    submitted = mailbox.submit_background(_request(thread_id, "ask ok?"))
    execution.drain_thread(thread_id, first=_claimed(thread_id, submitted.dispatch_id))
    ((sender, answer),) = senders
    sender.join(15)
    assert answer == [True], answer  # acknowledged because it was queued durably
    resumes = [d for d in store.list_dispatches(thread_id) if d.dispatch_id != submitted.dispatch_id]
    assert len(resumes) == 1 and resumes[0].run_id == submitted.run_id
    execution.drain_thread(thread_id, first=_claimed(thread_id, resumes[0].dispatch_id))
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert run.final_output == 'approved: {"ok": true}'


def _record_live_deliveries(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The outcome of every live delivery the service attempts, in order (the real delivery runs)."""
    outcomes: list[bool] = []
    deliver = mailbox.deliver_live_command

    def recording(target: Any, command: dict[str, Any]) -> bool:
        outcomes.append(deliver(target, command))
        return outcomes[-1]

    monkeypatch.setattr(mailbox, "deliver_live_command", recording)
    return outcomes


# --- spec §7.7: each dispatch delivers its own input --------------------------------------------------


def test_a_decision_then_a_follow_up_on_one_waiting_run_each_deliver_their_own_input(fenced: Any) -> None:
    thread_id = "t-own-input"
    asked = mailbox.submit_background(_request(thread_id, "ask approve?"))
    execution.drain_thread(thread_id, first=_claimed(thread_id, asked.dispatch_id))
    waiting = run_store.load_run(run_id=asked.run_id)
    assert waiting is not None and waiting.status is RunStatus.WAITING and waiting.waiting is not None
    call_id = waiting.waiting.tickets[0].tool_call_id

    # both are queued before either executes (the decision's dispatch is claimed inline)
    resume = ToolCallResume(decision_id="d1", action="resume", result={"approved": True})
    assert mailbox.send_decision(mailbox.RunTarget(asked.run_id), call_id, resume)
    follow = mailbox.submit_background(_request(thread_id, "and then this"))
    assert follow.run_id == asked.run_id and follow.status is mailbox.SubmitStatus.QUEUED
    (decision_dispatch,) = store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])
    execution.drain_thread(thread_id, first=decision_dispatch)

    assert _texts(thread_id) == [
        "ask approve?",
        "and then this",
        'approved: {"approved": true}',
        "echo: and then this",
    ]
    # The decision's resume ended the run. The follow-up, queued for the run while it waited, found it
    # done: a finished run never moves back to Running (it used to be restarted here, which is how a
    # second decision ran the agent's turn twice), so the follow-up was settled as already done and its
    # own input delivered as a new run on the thread.
    dispatches = store.list_dispatches(thread_id)
    assert [d.status for d in dispatches] == [DispatchStatus.ACKED] * 4
    assert [f["status"] for f in _finishes(asked.run_id)] == ["waiting", "done"]
    (redelivered,) = [d for d in dispatches if d.run_id != asked.run_id]
    follow_up = store.load_dispatch(follow.dispatch_id)
    assert follow_up is not None and follow_up.run_id == asked.run_id
    assert redelivered.request is not None and follow_up.request is not None
    assert redelivered.request["input_message_ids"] == follow_up.request["input_message_ids"]
    successor = run_store.load_run(run_id=redelivered.run_id)
    assert successor is not None and successor.status is RunStatus.DONE
    assert successor.final_output == "echo: and then this"
    assert [f["status"] for f in _finishes(successor.run_id)] == ["done"]


# --- terminal events ---------------------------------------------------------------------------------


def test_a_retried_run_emits_retries_and_exactly_one_end(fenced: Any) -> None:
    thread_id = "t-retry-events"
    submitted = mailbox.submit_background(_request(thread_id, "fail transient"))
    dispatch = _claimed(thread_id, submitted.dispatch_id)
    while dispatch is not None:
        execution.execute_claimed(dispatch)
        current = store.load_dispatch(submitted.dispatch_id)
        assert current is not None
        if current.is_terminal:
            break
        claimed = store.claim(thread_id, consumer_id(), FAST.lease_ms, current.available_at)
        dispatch = claimed[0] if claimed else None
    kinds = [e.type for e in events.read_events(submitted.run_id)]
    assert kinds.count("run_retry") == 4 and kinds.count(events.RUN_FINISH) == 1
    assert kinds[-1] == events.RUN_FINISH
    assert _finishes(submitted.run_id)[0]["termination"]["type"] == "error"


def test_a_dead_letter_by_the_sweep_ends_the_run_and_its_stream(fenced: Any) -> None:
    thread_id = "t-sweep-dead"
    request = _request(thread_id, "hello")
    with_one_attempt = MailboxConfig(
        lease_ms=FAST.lease_ms,
        lease_renewal_interval_ms=FAST.lease_renewal_interval_ms,
        default_max_attempts=1,
    )
    fenced.AWAKEN_MAILBOX = with_one_attempt
    submitted = mailbox.submit_background(request)
    swept = maintenance.sweep(now=now_ms() + FAST.lease_ms + 1)
    assert swept.dead_lettered == 1
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert [f["termination"]["type"] for f in _finishes(submitted.run_id)] == ["error"]


def test_cancelling_a_waiting_run_ends_its_stream(fenced: Any) -> None:
    thread_id = "t-cancel-waiting"
    asked = mailbox.submit_background(_request(thread_id, "ask really?"))
    execution.drain_thread(thread_id, first=_claimed(thread_id, asked.dispatch_id))
    assert mailbox.cancel(mailbox.RunTarget(asked.run_id))
    assert [f["status"] for f in _finishes(asked.run_id)] == ["waiting", "done"]
    assert _finishes(asked.run_id)[-1]["termination"]["type"] == "cancelled"


def test_a_superseded_queued_run_ends_its_stream(fenced: Any) -> None:
    thread_id = "t-supersede-queued"
    running = mailbox.submit_background(_request(thread_id, "first"))
    queued = mailbox.submit_background(_request(thread_id, "second"))
    assert queued.status is mailbox.SubmitStatus.QUEUED
    mailbox.interrupt_detailed(thread_id)
    assert [f["termination"]["type"] for f in _finishes(queued.run_id)] == ["cancelled"]
    assert _finishes(running.run_id) == []  # the claimed one ends when its attempt touches the fence


# --- commits per lifecycle ---------------------------------------------------------------------------


def _commits() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def test_a_background_noop_lifecycle_costs_three_commits(
    fenced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submit (messages, run, dispatch, inline claim), start and finish: three commits, counted by
    PostgreSQL itself (`pg_stat_database.xact_commit`, which counts read-only transactions too)."""
    handed: list[tuple[str, str, str]] = []
    monkeypatch.setattr(
        doorbells, "send_doorbell", lambda name, args, countdown_s=None: handed.append(tuple(args))
    )
    # warm up: the connection, and psycopg's prepared statements (prepared on their second run, which
    # costs one extra implicit transaction per statement and connection, once)
    for k in range(3):
        mailbox.submit_background(_request(f"t-warm-{k}", "warm", agent="noop"))
        thread_id, dispatch_id, token = handed[-1]
        warm = DispatchRecord(
            dispatch_id=dispatch_id, thread_id=thread_id, run_id="", status=DispatchStatus.CLAIMED,
            claim_token=token,
        )  # fmt: skip
        execution.drain_thread(thread_id, first=warm)
    for _ in range(3):
        _commits()
    baseline = _commits()
    overhead = _commits() - baseline  # what reading the counter itself costs
    before = _commits()
    submitted = mailbox.submit_background(_request("t-commits", "hello", agent="noop"))
    after_submit = _commits()
    thread_id, dispatch_id, token = handed[-1]
    claim = DispatchRecord(
        dispatch_id=dispatch_id,
        thread_id=thread_id,
        run_id="",
        status=DispatchStatus.CLAIMED,
        claim_token=token,
    )
    execution.drain_thread(thread_id, first=claim)
    after = _commits()
    assert dispatch_id == submitted.dispatch_id
    assert after_submit - before - overhead == 1
    assert after - after_submit - overhead == 2
    done = store.load_dispatch(submitted.dispatch_id)
    assert done is not None and done.status is DispatchStatus.ACKED


# --- the lock-busy path ------------------------------------------------------------------------------


def test_a_claim_whose_thread_lock_another_process_holds_is_requeued_behind_it(fenced: Any) -> None:
    """The thread's Redis lock is held by another claim's token (its worker runs on after a reclaim):
    the new claim never starts; it is nacked to retry when that lock expires."""
    thread_id = "t-lock-busy"
    submitted = mailbox.submit_background(_request(thread_id, "hello"))
    claim = _claimed(thread_id, submitted.dispatch_id)
    assert ThreadLock(thread_id, "another-claims-token", 2_000).acquire()
    report = execution.execute_claimed(claim)
    assert report.final_status == "queued"
    requeued = store.load_dispatch(submitted.dispatch_id)
    assert requeued is not None and requeued.status is DispatchStatus.QUEUED
    assert requeued.last_error == "thread lock held by another worker"
    assert requeued.available_at >= now_ms() + 1_000  # behind the holder's remaining TTL
    assert requeued.dispatch_instance_id is None
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.status is RunStatus.CREATED


# --- one claim, one start; a stale prepare never moves a started run back ----------------------------


def test_a_claim_is_started_by_one_attempt_only(fenced: Any) -> None:
    """A duplicate hand-over of the same claim (same token) that finds the thread lock free — the first
    attempt released it before its finish — does not start the claim a second time."""
    thread_id = "t-start-once"
    submitted = mailbox.submit_background(_request(thread_id, "hello"))
    claim = _claimed(thread_id, submitted.dispatch_id)
    first = attempt.start(claim, "instance-1", "worker-1")
    assert isinstance(first, attempt.Started)
    second = attempt.start(claim, "instance-2", "worker-2")
    assert isinstance(second, attempt.Lost)
    assert second.current is not None and second.current.status is DispatchStatus.CLAIMED
    assert second.current.dispatch_instance_id == "instance-1" and second.current.claimed_by == "worker-1"
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.session_id == "instance-1"


def test_a_prepare_that_read_a_waiting_run_never_moves_a_started_run_back(fenced: Any) -> None:
    thread_id = "t-stale-prepare"
    asked = mailbox.submit_background(_request(thread_id, "ask ok?"))
    execution.drain_thread(thread_id, first=_claimed(thread_id, asked.dispatch_id))
    stale = run_store.load_run(run_id=asked.run_id)
    assert stale is not None and stale.status is RunStatus.WAITING and stale.waiting is not None
    resume = ToolCallResume(decision_id="d1", action="resume", result={})
    assert mailbox.send_decision(
        mailbox.RunTarget(asked.run_id), stale.waiting.tickets[0].tool_call_id, resume
    )
    (resumed,) = store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])
    started = attempt.start(resumed, "instance-resume", "worker-1")
    assert isinstance(started, attempt.Started)

    # a submit that read the run while it was waiting writes its input now
    run_store.prepare_run(
        run=stale, messages=[ChatMessage.user("late", id="m-late")], input_trigger_ids=["m-late"],
        owner_id=None, now=now_ms(),
    )  # fmt: skip
    run = run_store.load_run(run_id=asked.run_id)
    assert run is not None and run.status is RunStatus.RUNNING
    assert (run.dispatch_id, run.session_id) == (resumed.dispatch_id, "instance-resume")
    finished = attempt.finish(started, COMPLETED, RunResult(final_output="ok"), None, cancelled=False)
    assert isinstance(finished, attempt.Finished) and finished.run is not None
    assert finished.run.final_output == "ok"


def test_a_run_waiting_out_its_retry_backoff_can_be_cancelled(fenced: Any) -> None:
    """A transient failure requeues the dispatch with a backoff; the run stays Running under it, and no
    worker holds it. Cancelling the run cancels that dispatch and ends the run (and its stream)."""
    thread_id = "t-cancel-retrying"
    submitted = mailbox.submit_background(_request(thread_id, "fail transient"))
    execution.execute_claimed(_claimed(thread_id, submitted.dispatch_id))
    queued = store.load_dispatch(submitted.dispatch_id)
    assert queued is not None and queued.status is DispatchStatus.QUEUED and queued.attempt_count == 1
    assert mailbox.cancel(mailbox.RunTarget(submitted.run_id))
    cancelled = store.load_dispatch(submitted.dispatch_id)
    assert cancelled is not None and cancelled.status is DispatchStatus.CANCELLED
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert [f["termination"]["type"] for f in _finishes(submitted.run_id)] == ["cancelled"]


def test_a_cancel_in_the_finish_window_of_a_run_that_ends_waiting_cancels_it(
    fenced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_id = "t-window-cancel"
    answers: list[tuple[threading.Thread, list[Any]]] = []
    deliveries = _record_live_deliveries(monkeypatch)

    def cancel_now(active: Any) -> None:
        execution.step_hook.clear()
        answers.append(_in_thread(mailbox.cancel, mailbox.RunTarget(active.run_id)))
        wait_until(lambda: deliveries == [False], what="the live cancel refused (inbox closed)")

    execution.step_hook["before_finish"] = cancel_now
    submitted = mailbox.submit_background(_request(thread_id, "ask cancel me?"))
    execution.drain_thread(thread_id, first=_claimed(thread_id, submitted.dispatch_id))
    ((sender, answer),) = answers
    sender.join(15)
    assert answer == [True], answer  # acknowledged: it waited for the run to end waiting, then cancelled
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert [f["status"] for f in _finishes(submitted.run_id)] == ["waiting", "done"]
    assert _finishes(submitted.run_id)[-1]["termination"]["type"] == "cancelled"


def test_a_decision_acknowledged_live_but_not_taken_before_a_transient_failure_reaches_the_retry(
    fenced: Any,
) -> None:
    thread_id = "t-carry-decision"
    submitted = mailbox.submit_background(_request(thread_id, "go", agent="decision-then-fail"))
    worker, out = _in_thread(execution.execute_claimed, _claimed(thread_id, submitted.dispatch_id))
    assert GATE.reached.wait(15)
    target = LiveRunTarget(thread_id, submitted.run_id, submitted.dispatch_id)
    resume = ToolCallResume(decision_id="d1", action="resume", result={"ok": True})
    assert mailbox.send_decision_live(target, "call-x", resume)  # acknowledged: the run holds it
    GATE.release.set()
    worker.join(15)
    requeued = store.load_dispatch(submitted.dispatch_id)
    assert requeued is not None and requeued.status is DispatchStatus.QUEUED, out
    claimed = store.claim(thread_id, consumer_id(), FAST.lease_ms, requeued.available_at)
    execution.execute_claimed(claimed[0])
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None and run.final_output == "retry got call-x:resume"
