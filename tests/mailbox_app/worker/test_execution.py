"""Counterparts of the reference's engine-level `mailbox.rs` tests, on our Celery doorbells.

The reference's lifecycle (startup recovery task, maintenance loop, dispatch-signal loop) maps onto:
startup recovery = `maintenance.recover_with_retry` wired to Celery's `worker_ready`; the signal loop =
the `mailbox.dispatch_thread` task and its `dispatch_signals.handle_dispatch_signal` decision (ACK / RETRY);
maintenance = beat tasks. Workers are real Celery workers (thread pool) on the real Redis broker inside
this process; the database is the real PostgreSQL with committed data. Failures are injected through
PostgreSQL itself (a lock held by another connection plus `lock_timeout`), never by faking the store.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from celery.signals import worker_ready
from django.db import DatabaseError, connection, transaction

from awaken_project.celery import app
from mailbox_app import doorbells, events, maintenance, service, store
from mailbox_app.agents.base import RunContext, RunResult
from mailbox_app.contract.ids import consumer_id, now_ms, uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, LiveRunTarget
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import AdapterKind, RunMode, RunOrigin, RunRequest, validate_run_inputs
from mailbox_app.contract.storage import RunRecord
from mailbox_app.contract.suspension import RunWaitingState
from mailbox_app.live import LiveSubscription
from mailbox_app.preparation import build_dispatch, prepare_run_for_dispatch
from mailbox_app.selectors import mailbox_overview
from mailbox_app.worker import dispatch_signals
from mailbox_app.worker.execution import DispatchAttempt, drain_thread, execute_claimed
from mailbox_app.worker.registry import local_runs
from runs_app import store as run_store
from runs_app.models import Thread
from tests.support.agents import RECORDER, TEST_AGENTS
from tests.support.dispatches import FAST
from tests.support.waiting import wait_until

LONG_LEASE = FAST.model_copy(update={"lease_ms": 30_000, "lease_renewal_interval_ms": 10_000})
LOCK_TIMEOUT_MS = 150


# --- test agents (the user's plug-in may be doubled; the store may not) --------------------------------

STUBBORN_SAW_CANCEL: list[bool] = []
BACKGROUND_ERRORS: list[BaseException] = []


class StubbornAgent:
    """Accepts a cancel (the flag is set) but keeps working until released: its claim is not released."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        with RECORDER.lock:
            RECORDER.calls.append(request)
        RECORDER.started.set()
        RECORDER.release.wait(30)
        STUBBORN_SAW_CANCEL.append(context.is_cancelled())
        return RunResult(final_output="stubborn done")


class BackgroundTaskAgent:
    """First activation spawns a background task and waits for it; the task finishes after the run has
    durably suspended and notifies the mailbox. The wake activation completes the run."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        with RECORDER.lock:
            RECORDER.calls.append(request)
        if request.continue_run_id:
            return RunResult(final_output="woken")
        threading.Thread(target=self._task, args=(context,), daemon=True).start()
        return RunResult(waiting=RunWaitingState(reason="background_tasks"))

    @staticmethod
    def _task(context: RunContext) -> None:
        try:
            wait_until(
                lambda: (r := run_store.load_run(run_id=context.run_id)) and r.status is RunStatus.WAITING,
                what="run suspended on its background task",
            )
            context.notify_background_task_done(task_id="task-1", result={"done": True})
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            BACKGROUND_ERRORS.append(exc)
        finally:
            connection.close()


EXTRA_AGENTS = {
    **TEST_AGENTS,
    "stubborn": f"{__name__}.StubbornAgent",
    "bgtask": f"{__name__}.BackgroundTaskAgent",
}


# --- fixtures and helpers --------------------------------------------------------------------------------


@pytest.fixture
def engine(transactional_db: None, engine_settings: Any, clean_redis: redis.Redis) -> Iterator[Any]:
    """Committed database + engine settings + clean Redis, *without* a worker; Redis is flushed after too
    (doorbells sent while no worker runs must not leak into later tests)."""
    engine_settings.AWAKEN_AGENTS = EXTRA_AGENTS
    STUBBORN_SAW_CANCEL.clear()
    BACKGROUND_ERRORS.clear()
    yield engine_settings
    RECORDER.release.set()
    clean_redis.flushdb()


@pytest.fixture
def worker(engine: Any) -> Iterator[Any]:
    with _worker() as running:
        yield running


@contextmanager
def _worker() -> Iterator[Any]:
    """Like the shared `mailbox_worker`, but polling the broker every 100 ms so it also stops quickly."""
    saved = app.conf.broker_transport_options
    app.conf.broker_transport_options = {**saved, "polling_interval": 0.1}
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=15,
        ) as running:
            yield running
    finally:
        app.conf.broker_transport_options = saved
        RECORDER.release.set()


def _tid(prefix: str) -> str:
    return f"{prefix}-{uuid7()[-12:]}"


def _request(thread_id: str, text: str, agent_id: str = "counting", **extra: Any) -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], agent_id=agent_id, **extra)


def _enqueue_prepared(
    thread_id: str, text: str, agent_id: str = "counting", **changes: Any
) -> DispatchRecord:
    """Prepare the run and enqueue its dispatch without ringing any worker (a crash before the doorbell)."""
    request = _request(thread_id, text, agent_id)
    tid, messages = validate_run_inputs(request.thread_id, request.messages, allow_empty=False)
    request, _ = prepare_run_for_dispatch(request, tid, messages)
    dispatch = build_dispatch(request, tid)
    return store.enqueue(dispatch.replace(**changes) if changes else dispatch)


def _dispatch_when(
    dispatch_id: str, predicate: Callable[[DispatchRecord], bool], what: str
) -> DispatchRecord:
    found = wait_until(
        lambda: (d := store.load_dispatch(dispatch_id)) is not None and predicate(d) and d, what=what
    )
    assert isinstance(found, DispatchRecord)
    return found


def _status(dispatch_id: str, status: DispatchStatus) -> DispatchRecord:
    return _dispatch_when(dispatch_id, lambda d: d.status is status, f"{dispatch_id} {status.value}")


def _run_when(run_id: str, status: RunStatus) -> RunRecord:
    found = wait_until(
        lambda: (r := run_store.load_run(run_id=run_id)) is not None and r.status is status and r,
        what=f"run {run_id} {status.value}",
    )
    assert isinstance(found, RunRecord)
    return found


def _calls_for(dispatch_id: str) -> int:
    with RECORDER.lock:
        return sum(1 for call in RECORDER.calls if call.dispatch_id == dispatch_id)


def _concurrently(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread (own DB connection), released together; results or exceptions."""
    barrier = threading.Barrier(len(calls), timeout=15)
    results: list[Any] = [None] * len(calls)

    def work(index: int, call: Callable[[], Any]) -> None:
        try:
            connection.ensure_connection()
            barrier.wait()
            results[index] = call()
        except BaseException as exc:  # noqa: BLE001
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "concurrent calls did not finish"
    return results


class _HeldLock:
    """A PostgreSQL lock held by another connection until `release()` (which waits for its commit)."""

    def __init__(self, statement: str, params: Sequence[Any] = ()) -> None:
        self._locked = threading.Event()
        self._release = threading.Event()
        self._done = threading.Event()
        self._statement, self._params = statement, params
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(self._statement, self._params)
                self._locked.set()
                self._release.wait(30)
        finally:
            connection.close()
            self._done.set()

    def __enter__(self) -> _HeldLock:
        self._thread.start()
        assert self._locked.wait(10), "could not take the lock"
        return self

    def release(self) -> None:
        self._release.set()
        assert self._done.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._thread.join(10)


@contextmanager
def _lock_timeout() -> Iterator[None]:
    """This connection gives up waiting for a lock after LOCK_TIMEOUT_MS (a genuine database error)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")


class _OnRetryWarning(logging.Handler):
    """Counts recover_with_retry's "attempt failed; retrying" warnings and runs `action` on each."""

    def __init__(self, action: Callable[[], None] | None = None) -> None:
        super().__init__(logging.WARNING)
        self.action = action
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "startup recovery attempt" in record.getMessage():
            self.count += 1
            if self.action is not None:
                self.action()


@contextmanager
def _retry_warnings(action: Callable[[], None] | None = None) -> Iterator[_OnRetryWarning]:
    handler = _OnRetryWarning(action)
    logger = logging.getLogger("mailbox_app.maintenance")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _expired_claim(thread_id: str, agent_id: str = "counting") -> DispatchRecord:
    """A dispatch claimed by a consumer that died: its 1 ms lease is already over."""
    dispatch = _enqueue_prepared(thread_id, "recover stale", agent_id)
    claim_now = dispatch.available_at
    claimed = store.claim(thread_id, "dead-consumer", 1, claim_now)
    assert len(claimed) == 1 and claimed[0].lease_until == claim_now + 1
    wait_until(lambda: now_ms() > claim_now + 1)
    return claimed[0]


def _stream_id(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


# --- startup recovery (the reference's lifecycle) ---------------------------------------------------------


def test_startup_recovery_runs_existing_queued_dispatches(worker: Any) -> None:
    """seed: start_lifecycle_runs_startup_recovery_for_existing_queued_dispatches"""
    thread_id = _tid("thread-recover")
    dispatch = _enqueue_prepared(thread_id, "recover me", agent_id="missing-agent")
    assert store.load_dispatch(dispatch.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]

    worker_ready.send(sender=None)  # what a starting worker does: run startup recovery

    dead = _status(dispatch.dispatch_id, DispatchStatus.DEAD_LETTER)
    assert dead.last_error is not None and "missing-agent" in dead.last_error
    run = _run_when(dispatch.run_id, RunStatus.DONE)
    assert run.termination_reason is not None and run.termination_reason.type == "error"


def test_startup_recovery_reclaims_expired_claims_and_executes_them(worker: Any) -> None:
    """seed: start_lifecycle_reclaims_expired_claimed_dispatches_and_executes_them"""
    thread_id = _tid("thread-stale")
    stale = _expired_claim(thread_id, agent_id="missing-agent")

    report = maintenance.recover()
    assert report.reclaimed == 1

    dead = _status(stale.dispatch_id, DispatchStatus.DEAD_LETTER)
    assert dead.attempt_count == 1, "the lost lease counted as one attempt"
    assert dead.run_id != dead.dispatch_id
    assert dead.dispatch_instance_id is not None, "it was re-executed"
    assert dead.run_error is not None and "missing-agent" in dead.run_error
    assert dead.last_error is not None and "missing-agent" in dead.last_error
    # the runtime-trace projection describes the failed attempt as finished with an error (spec §4.12 step 10)
    assert dead.run_status == RunStatus.DONE.value
    assert isinstance(dead.termination, dict) and dead.termination.get("type") == "error"
    assert "missing-agent" in str(dead.termination.get("value"))


def test_startup_recovery_with_a_single_attempt_fails_and_changes_nothing(engine: Any) -> None:
    """seed: start_lifecycle_ready_fails_when_startup_recovery_fails"""
    thread_id = _tid("thread-recover-fail")
    stale = _expired_claim(thread_id)

    with _lock_timeout(), _HeldLock("LOCK TABLE mailbox_dispatch IN ACCESS EXCLUSIVE MODE"):
        with _retry_warnings() as warnings, pytest.raises(DatabaseError, match="lock timeout"):
            maintenance.recover_with_retry(attempts=1, delay_ms=0)
        assert warnings.count == 0, "one attempt, no retry"

    after = store.load_dispatch(stale.dispatch_id)
    assert after is not None and after.status is DispatchStatus.CLAIMED, "the failed recovery rolled back"
    assert after.claim_token == stale.claim_token and after.attempt_count == 0
    assert maintenance.recover().reclaimed == 1, "once the database answers, recovery proceeds"


def test_startup_recovery_attempts_below_one_mean_one(engine: Any) -> None:
    """Spec §1.13: startup_recovery.max_attempts values < 1 are treated as 1 (docstring of
    recover_with_retry says the same)."""
    _expired_claim(_tid("thread-recover-zero"))
    with (
        _lock_timeout(),
        _HeldLock("LOCK TABLE mailbox_dispatch IN ACCESS EXCLUSIVE MODE"),
        _retry_warnings() as warnings,
        pytest.raises(DatabaseError),
    ):
        maintenance.recover_with_retry(attempts=0, delay_ms=0)
    assert warnings.count == 0, f"attempts=0 must mean one attempt, saw {warnings.count} retries"


def test_startup_recovery_retries_until_the_database_answers(worker: Any) -> None:
    """seed: start_lifecycle_ready_retries_startup_recovery_until_ready"""
    thread_id = _tid("thread-retry-recover")
    dispatch = _enqueue_prepared(thread_id, "recover", agent_id="missing-agent")

    # the first attempt fails on the held lock; its retry warning releases the lock before the retry
    with (
        _lock_timeout(),
        _HeldLock("LOCK TABLE mailbox_dispatch IN ACCESS EXCLUSIVE MODE") as lock,
        _retry_warnings(action=lock.release) as warnings,
    ):
        report = maintenance.recover_with_retry(attempts=2, delay_ms=50)
    assert warnings.count == 1
    assert report.redriven >= 1

    dead = _status(dispatch.dispatch_id, DispatchStatus.DEAD_LETTER)
    assert dead.last_error is not None and "missing-agent" in dead.last_error


def test_concurrent_recoveries_reclaim_once_and_run_each_dispatch_once(worker: Any) -> None:
    """seed: start_lifecycle_ready_serializes_concurrent_recovery
    seed: concurrent_start_lifecycle_is_idempotent
    """
    stale = _expired_claim(_tid("thread-conc-stale"))
    queued = [_enqueue_prepared(_tid("thread-conc-queued"), f"queued {i}") for i in range(2)]

    reports = _concurrently([maintenance.recover for _ in range(8)])
    assert all(isinstance(r, maintenance.RecoveryReport) for r in reports), reports
    assert sum(r.reclaimed for r in reports) == 1, "the expired claim is reclaimed exactly once"

    for dispatch in [stale, *queued]:
        _status(dispatch.dispatch_id, DispatchStatus.ACKED)
        assert _calls_for(dispatch.dispatch_id) == 1, "acked dispatches can never be claimed again"


def test_doorbell_and_startup_recovery_together_run_a_dispatch_once(worker: Any) -> None:
    """seed: start_lifecycle_does_not_bypass_ready_transition"""
    thread_id = _tid("thread-ring-and-recover")
    dispatch = _enqueue_prepared(thread_id, "once")
    doorbells.ring_on_commit(thread_id, dispatch.dispatch_id)  # autocommit: rings now
    worker_ready.send(sender=None)
    maintenance.recover()
    _status(dispatch.dispatch_id, DispatchStatus.ACKED)
    assert _calls_for(dispatch.dispatch_id) == 1
    assert store.list_dispatches(thread_id, [DispatchStatus.QUEUED, DispatchStatus.CLAIMED]) == []


def test_doorbells_survive_without_a_worker_and_recovery_is_idempotent(engine: Any) -> None:
    """seed: start_lifecycle_is_idempotent_and_drop_does_not_abort_recovery
    seed: start_lifecycle_handle_drop_keeps_lifecycle_running

    No worker is running: a submit's hand-over and a recovery's doorbells are durable broker messages,
    so the work they announce runs once a worker starts; a second recovery changes nothing.
    """
    engine.AWAKEN_MAILBOX = LONG_LEASE
    submitted = service.submit_background(_request(_tid("thread-no-worker"), "handed over"))
    assert submitted.status is service.SubmitStatus.RUNNING
    claimed = store.load_dispatch(submitted.dispatch_id)
    assert claimed is not None and claimed.status is DispatchStatus.CLAIMED
    queued = _enqueue_prepared(_tid("thread-recovered"), "recovered")

    first = maintenance.recover()
    second = maintenance.recover()
    assert (first.reclaimed, first.redriven) == (0, 1)
    assert (second.reclaimed, second.reconciled, second.redriven) == (0, 0, 1)
    assert store.load_dispatch(submitted.dispatch_id) == claimed, "recovery leaves a live claim alone"
    assert store.load_dispatch(queued.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]

    with _worker():  # a test worker sends no worker_ready: only the earlier doorbells can start this work
        _status(submitted.dispatch_id, DispatchStatus.ACKED)
        _status(queued.dispatch_id, DispatchStatus.ACKED)
    assert _calls_for(submitted.dispatch_id) == 1
    assert _calls_for(queued.dispatch_id) == 1


def test_worker_shutdown_quiesces_and_a_new_worker_takes_over(engine: Any) -> None:
    """seed: lifecycle_shutdown_waits_for_maintenance_to_quiesce
    seed: start_lifecycle_explicit_abort_allows_restart

    A warm worker shutdown returns only once its in-flight execution has settled (acked, run done,
    nothing left in the local registry); work submitted while no worker runs is taken by the next one.
    """
    with _worker() as first_worker:
        inflight = service.submit_background(_request(_tid("thread-quiesce"), "sleep 0.4", agent_id="echo"))
        _run_when(inflight.run_id, RunStatus.RUNNING)
        first_worker.stop(in_sighandler=False)  # warm shutdown
        # once shutdown returns, the in-flight execution has settled and nothing runs any more
        assert store.load_dispatch(inflight.dispatch_id).status is DispatchStatus.ACKED  # type: ignore[union-attr]
        assert run_store.load_run(run_id=inflight.run_id).status is RunStatus.DONE  # type: ignore[union-attr]
        assert local_runs() == []

    later = service.submit_background(_request(_tid("thread-restart"), "after restart"))
    with _worker():
        _status(later.dispatch_id, DispatchStatus.ACKED)
    assert _calls_for(later.dispatch_id) == 1


# --- dispatch signals (doorbells) ------------------------------------------------------------------------


def test_doorbell_claims_and_executes_a_queued_dispatch(worker: Any) -> None:
    """seed: dispatch_signal_loop_claims_and_executes_queued_dispatch"""
    thread_id = _tid("thread-signal-loop")
    dispatch = _enqueue_prepared(thread_id, "wake")
    doorbells.ring_on_commit(thread_id, dispatch.dispatch_id)

    acked = _status(dispatch.dispatch_id, DispatchStatus.ACKED)
    assert acked.run_status == "done"
    assert _calls_for(dispatch.dispatch_id) == 1
    duplicate = dispatch_signals.handle_dispatch_signal(thread_id, dispatch.dispatch_id, deliveries=2)
    assert duplicate.action is dispatch_signals.SignalAction.ACK, "a duplicate doorbell is acked"
    assert duplicate.attempt is DispatchAttempt.NO_ELIGIBLE
    assert _calls_for(dispatch.dispatch_id) == 1, "and runs nothing again"


def test_doorbell_retries_after_a_claim_error_then_runs(engine: Any) -> None:
    """seed: dispatch_signal_loop_nacks_and_redelivers_after_claim_error"""
    thread_id = _tid("thread-signal-redeliver")
    dispatch = _enqueue_prepared(thread_id, "wake")
    epoch_row = "SELECT current_epoch FROM mailbox_thread_epoch WHERE thread_id = %s FOR UPDATE"

    with _lock_timeout(), _HeldLock(epoch_row, [thread_id]):
        failed = dispatch_signals.handle_dispatch_signal(thread_id, dispatch.dispatch_id, deliveries=1)
    assert failed.action is dispatch_signals.SignalAction.RETRY
    assert failed.attempt is DispatchAttempt.TRANSIENT_ERROR
    assert failed.retry_after_ms == engine.AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS
    untouched = store.load_dispatch(dispatch.dispatch_id)
    assert untouched is not None and untouched.status is DispatchStatus.QUEUED
    assert untouched.attempt_count == 0, "a failed claim is not an attempt"

    redelivered = dispatch_signals.handle_dispatch_signal(thread_id, dispatch.dispatch_id, deliveries=2)
    assert redelivered.action is dispatch_signals.SignalAction.ACK
    assert redelivered.attempt is DispatchAttempt.CLAIMED
    assert store.load_dispatch(dispatch.dispatch_id).status is DispatchStatus.ACKED  # type: ignore[union-attr]
    assert _calls_for(dispatch.dispatch_id) == 1


def test_doorbell_blocked_by_another_consumers_claim_retries_until_released(engine: Any, worker: Any) -> None:
    """seed: dispatch_signal_loop_nacks_when_signal_is_blocked_by_active_claim"""
    thread_id = _tid("thread-signal-blocked")
    active = _enqueue_prepared(thread_id, "active")
    claimed = store.claim(thread_id, "remote-owner", 30_000, now_ms())
    assert len(claimed) == 1 and claimed[0].claim_token
    queued = _enqueue_prepared(thread_id, "queued")

    blocked = dispatch_signals.handle_dispatch_signal(thread_id, queued.dispatch_id, deliveries=1)
    assert blocked.action is dispatch_signals.SignalAction.RETRY
    assert blocked.attempt is DispatchAttempt.NO_ELIGIBLE
    assert blocked.retry_after_ms == engine.AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS
    doorbells.ring_on_commit(thread_id, queued.dispatch_id)  # the Celery doorbell keeps retrying
    before_release = store.load_dispatch(queued.dispatch_id)
    assert before_release is not None and before_release.status is DispatchStatus.QUEUED

    store.ack(active.dispatch_id, claimed[0].claim_token, now_ms())
    _status(queued.dispatch_id, DispatchStatus.ACKED)
    assert _calls_for(queued.dispatch_id) == 1
    assert _calls_for(active.dispatch_id) == 0, "the other consumer's dispatch was never run here"


def test_busy_thread_doorbell_never_steals_and_queued_runs_after_current(worker: Any) -> None:
    """seed: dispatch_signal_busy_ack_still_runs_queued_dispatch_after_current_finishes

    Ours retries the busy doorbell (the claim may belong to another process) where the reference acks;
    either way the doorbell claims nothing while the thread is busy and the queued dispatch runs next.
    """
    thread_id = _tid("thread-signal-busy")
    first = service.submit_background(_request(thread_id, "first", agent_id="blocking"))
    assert RECORDER.started.wait(10)
    second = service.submit_background(_request(thread_id, "second", agent_id="blocking"))
    assert second.status is service.SubmitStatus.QUEUED

    busy = dispatch_signals.handle_dispatch_signal(thread_id, second.dispatch_id, deliveries=1)
    assert busy.attempt is DispatchAttempt.NO_ELIGIBLE
    assert busy.action is dispatch_signals.SignalAction.RETRY
    waiting = store.load_dispatch(second.dispatch_id)
    assert waiting is not None and waiting.status is DispatchStatus.QUEUED and waiting.claim_token is None
    assert store.load_dispatch(first.dispatch_id).status is DispatchStatus.CLAIMED  # type: ignore[union-attr]

    RECORDER.release.set()
    _status(first.dispatch_id, DispatchStatus.ACKED)
    _status(second.dispatch_id, DispatchStatus.ACKED)
    first_run = _run_when(first.run_id, RunStatus.DONE)
    second_run = _run_when(second.run_id, RunStatus.DONE)
    assert first_run.finished_at is not None and second_run.started_at is not None
    assert first_run.finished_at <= second_run.started_at
    assert dispatch_signals.handle_dispatch_signal(thread_id, second.dispatch_id, deliveries=2).action is (
        dispatch_signals.SignalAction.ACK
    )


# --- execution ---------------------------------------------------------------------------------------------


def test_background_submit_delivers_scheduled_policy_context(worker: Any) -> None:
    """seed: submit_background_delivers_scheduled_policy_context"""
    result = service.submit_background(
        _request(_tid("thread-policy-bg"), "hello", agent_id="counting", adapter=AdapterKind.ACP)
    )
    acked = _status(result.dispatch_id, DispatchStatus.ACKED)
    with RECORDER.lock:
        requests = list(RECORDER.calls)
    assert len(requests) == 1
    seen = requests[0]
    assert seen.run_mode is RunMode.SCHEDULED
    assert seen.adapter is AdapterKind.ACP
    assert seen.dispatch_id == result.dispatch_id
    assert seen.session_id is not None and seen.session_id == acked.dispatch_instance_id
    assert seen.messages_already_persisted is True
    assert [m.text for m in seen.messages] == ["hello"]


def test_background_success_records_run_result_with_distinct_ids(worker: Any) -> None:
    """seed: background_success_records_run_result_and_keeps_dispatch_id_separate_from_run_id"""
    result = service.submit_background(_request(_tid("thread-run-result"), "go"))
    acked = _dispatch_when(
        result.dispatch_id,
        lambda d: d.status is DispatchStatus.ACKED and d.run_status == "done",
        "acked with run result",
    )
    assert acked.run_id == result.run_id and acked.run_id != acked.dispatch_id
    assert acked.dispatch_instance_id is not None
    assert isinstance(acked.termination, dict) and acked.termination["type"] == "natural_end"
    assert acked.run_response == "counted"
    assert acked.run_error is None
    assert acked.completed_at is not None and acked.completed_at >= acked.created_at
    run = _run_when(result.run_id, RunStatus.DONE)
    assert run.dispatch_id == result.dispatch_id
    assert run.session_id == acked.dispatch_instance_id


def test_reconstruct_failure_dead_letters_and_next_queued_still_runs(worker: Any) -> None:
    """seed: reconstruct_failure_cleans_worker_and_dispatches_next_queued"""
    thread_id = _tid("thread-reconstruct-next")
    now = now_ms()
    missing = store.enqueue(
        DispatchRecord(
            dispatch_id=f"dispatch-missing-run-{thread_id}",
            thread_id=thread_id,
            run_id="missing-run",
            priority=10,
            max_attempts=3,
            available_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    following = _enqueue_prepared(thread_id, "next", priority=20, created_at=now + 1, updated_at=now + 1)
    doorbells.ring_on_commit(thread_id, missing.dispatch_id)

    dead = _status(missing.dispatch_id, DispatchStatus.DEAD_LETTER)
    assert dead.last_error is not None and "missing-run" in dead.last_error
    assert dead.attempt_count == 0, "a reconstruction failure is permanent, not retried"
    _status(following.dispatch_id, DispatchStatus.ACKED)
    assert _calls_for(following.dispatch_id) == 1
    assert _calls_for(missing.dispatch_id) == 0, "the executor never saw the broken dispatch"


def test_lease_renewal_keeps_a_long_run_from_being_reclaimed(engine: Any, worker: Any) -> None:
    """seed: mailbox_lease_renewal_is_wired_and_prevents_reclaim"""
    engine.AWAKEN_MAILBOX = FAST.model_copy(update={"lease_ms": 500, "lease_renewal_interval_ms": 100})
    result = service.submit_background(_request(_tid("thread-lease-renewal"), "go", agent_id="blocking"))
    assert RECORDER.started.wait(10)
    initial = store.load_dispatch(result.dispatch_id)
    assert initial is not None and initial.lease_until is not None

    original_end = initial.lease_until

    def renewed_past_original() -> DispatchRecord | None:
        now = now_ms()
        current = store.load_dispatch(result.dispatch_id)
        if now <= original_end + 100 or current is None or current.lease_until is None:
            return None
        return current if current.lease_until > now + 200 else None

    renewed = wait_until(renewed_past_original, what="the original lease over, a renewed one running")
    assert renewed.status is DispatchStatus.CLAIMED and renewed.claim_token == initial.claim_token
    assert store.reclaim_expired_leases(now_ms(), 10) == [], "a renewed lease is not reclaimed"

    RECORDER.release.set()
    acked = _status(result.dispatch_id, DispatchStatus.ACKED)
    assert acked.attempt_count == 0


def test_dispatch_timestamps_and_depth_are_observable(worker: Any) -> None:
    """seed: mailbox_execution_records_dispatch_latency_metrics

    We export no metrics registry; latency is derivable from the dispatch timestamps and queue depth /
    claims come from `mailbox_overview` (the `mailbox_status` command and the admin).
    """
    thread_id = _tid("thread-metrics")
    first = service.submit_background(_request(thread_id, "first", agent_id="blocking"))
    assert RECORDER.started.wait(10)
    second = service.submit_background(_request(thread_id, "second", agent_id="blocking"))

    busy = mailbox_overview()
    assert busy.counts["claimed"] == 1 and busy.counts["queued"] == 1
    assert busy.oldest_queued_age_ms is not None and busy.oldest_queued_age_ms >= 0
    assert [c["dispatch_id"] for c in busy.claims] == [first.dispatch_id]
    assert busy.claims[0]["claimed_by"] == consumer_id()
    assert busy.claims[0]["lease_left_ms"] > 0

    RECORDER.release.set()
    done = [_status(r.dispatch_id, DispatchStatus.ACKED) for r in (first, second)]
    idle = mailbox_overview()
    assert idle.counts["acked"] == 2 and idle.counts["queued"] == 0 and idle.counts["claimed"] == 0
    assert idle.oldest_queued_age_ms is None and idle.claims == []
    for dispatch in done:
        assert dispatch.created_at <= dispatch.available_at <= dispatch.updated_at
        assert dispatch.completed_at is not None and dispatch.completed_at >= dispatch.created_at


def test_foreground_submit_streams_events_that_can_be_reread_from_any_id(worker: Any) -> None:
    """seed: submit_returns_event_channel
    seed: reconnect_sink_succeeds_for_running_worker
    """
    thread_id = _tid("thread-stream")
    result = service.submit(_request(thread_id, "hi", agent_id="blocking"))
    assert result.thread_id == thread_id
    assert result.dispatch_id and result.dispatch_id != result.run_id
    assert result.status is service.SubmitStatus.RUNNING

    early = wait_until(lambda: events.read_events(result.run_id), what="first events")
    assert early[0].type == "run_start" and early[0].data["dispatch_id"] == result.dispatch_id
    assert events.has_stream(result.run_id)
    resume_from = early[-1].id

    RECORDER.release.set()
    later: list[events.RunEvent] = []
    deadline = time.monotonic() + 15
    while not any(e.type == events.RUN_FINISH for e in later) and time.monotonic() < deadline:
        later += events.read_events(result.run_id, after=later[-1].id if later else resume_from, block_ms=500)
    assert later and later[-1].type == events.RUN_FINISH
    assert all(_stream_id(e.id) > _stream_id(resume_from) for e in later), "only newer events"
    replay = events.read_events(result.run_id)
    assert [e.id for e in replay] == [e.id for e in early] + [e.id for e in later]


def test_local_registry_tracks_only_running_runs_and_projection_clears(worker: Any) -> None:
    """seed: gc_idle_workers_keeps_worker_with_queued_dispatches
    seed: gc_idle_workers_removes_idle_with_no_dispatches
    seed: thread_context_cache_cleared_on_idle_transition
    """
    thread_id = _tid("thread-registry")
    first = service.submit_background(_request(thread_id, "first", agent_id="blocking"))
    assert RECORDER.started.wait(10)
    running = local_runs()
    assert [(a.thread_id, a.run_id, a.dispatch_id) for a in running] == [
        (thread_id, first.run_id, first.dispatch_id)
    ]
    thread = run_store.load_thread(thread_id=thread_id)
    assert thread is not None and thread.active_run_id == first.run_id

    second = service.submit_background(_request(thread_id, "second", agent_id="blocking"))
    assert second.status is service.SubmitStatus.QUEUED
    assert [a.dispatch_id for a in local_runs()] == [first.dispatch_id], "queued work holds no local state"

    RECORDER.release.set()
    _run_when(first.run_id, RunStatus.DONE)
    _run_when(second.run_id, RunStatus.DONE)
    _status(second.dispatch_id, DispatchStatus.ACKED)
    wait_until(lambda: local_runs() == [], what="local registry emptied")
    thread = run_store.load_thread(thread_id=thread_id)
    assert thread is not None and thread.active_run_id is None and thread.open_run_id is None


def test_waiting_thread_is_reactivated_by_incoming_message(worker: Any) -> None:
    """seed: waiting_thread_is_reactivated_by_incoming_message"""
    thread_id = _tid("thread-waiting")
    run_store.checkpoint(
        thread_id=thread_id,
        messages=[],
        run=RunRecord(
            run_id=f"run-waiting-{thread_id}",
            thread_id=thread_id,
            agent_id="counting",
            status=RunStatus.WAITING,
            waiting=RunWaitingState(reason="background_tasks"),
            created_at=1,
            updated_at=1,
            steps=2,
        ),
        now=1,
    )
    submitted = service.submit_background(_request(thread_id, "poke"))
    assert submitted.run_id == f"run-waiting-{thread_id}"
    run = _run_when(submitted.run_id, RunStatus.DONE)
    assert run.updated_at > 1 and run.final_output == "counted"
    with RECORDER.lock:
        assert [c.continue_run_id for c in RECORDER.calls] == [submitted.run_id]
    assert run_store.list_runs(thread_id=thread_id).total == 1


def test_recover_wakes_only_orphaned_background_task_waits(worker: Any) -> None:
    """seed: recover_only_enqueues_orphaned_background_task_waiting_runs"""
    bg_thread, user_thread = _tid("thread-bg-recover"), _tid("thread-user-recover")
    for run_id, thread_id, reason in (
        ("run-bg", bg_thread, "background_tasks"),
        ("run-user", user_thread, "user_input"),
    ):
        run_store.checkpoint(
            thread_id=thread_id,
            messages=[],
            run=RunRecord(
                run_id=f"{run_id}-{thread_id}",
                thread_id=thread_id,
                agent_id="counting",
                status=RunStatus.WAITING,
                waiting=RunWaitingState(reason=reason),
                created_at=1,
                updated_at=1,
            ),
            now=1,
        )

    report = maintenance.recover()
    assert report.woken == 1

    wait_until(lambda: len(RECORDER.calls) == 1, what="wake dispatched")
    _run_when(f"run-bg-{bg_thread}", RunStatus.DONE)
    with RECORDER.lock:
        wake = RECORDER.calls[0]
    assert wake.thread_id == bg_thread
    assert wake.continue_run_id == f"run-bg-{bg_thread}"
    assert wake.adapter is AdapterKind.INTERNAL
    assert wake.origin is RunOrigin.INTERNAL
    assert store.list_dispatches(user_thread) == [], "user-input waits stay suspended"
    assert maintenance.recover().woken == 0, "nothing is orphaned any more"
    assert wake.run_mode is RunMode.INTERNAL_WAKE, f"a recovery wake is internal_wake, got {wake.run_mode}"


def test_background_task_completion_enqueues_an_internal_wake(worker: Any) -> None:
    """seed: background_task_completion_should_enqueue_internal_wake_message"""
    thread_id = _tid("thread-bg")
    submitted = service.submit_background(_request(thread_id, "start", agent_id="bgtask"))

    run = _run_when(submitted.run_id, RunStatus.DONE)
    assert BACKGROUND_ERRORS == []
    assert run.final_output == "woken", "the wake resumed the same run"
    dispatches = store.list_dispatches(thread_id)
    assert len(dispatches) >= 2
    assert {d.run_id for d in dispatches} == {submitted.run_id}
    wake_messages = [
        m
        for m in run_store.load_messages(thread_id=thread_id) or []
        if m.role.value == "user" and m.visibility.value == "internal"
    ]
    assert len(wake_messages) == 1
    text = wake_messages[0].text
    assert "task-1" in text
    with RECORDER.lock:
        wake = RECORDER.calls[-1]
    assert wake.continue_run_id == submitted.run_id and wake.origin is RunOrigin.INTERNAL
    problems = []
    try:
        payload = json.loads(text[text.index("{") : text.rindex("}") + 1])
    except ValueError:
        payload = None
    if payload != {"done": True}:
        problems.append(f"the task result must be JSON in the wake message, got {text!r}")
    if wake.run_mode is not RunMode.INTERNAL_WAKE:
        problems.append(f"a background-task wake must run as internal_wake, got {wake.run_mode.value}")
    assert not problems, problems


# --- concurrency, interrupts and cancellation -------------------------------------------------------------


def test_concurrent_background_submits_on_one_thread_run_one_at_a_time(worker: Any) -> None:
    """seed: concurrent_submit_background_same_thread_only_one_runs"""
    thread_id = _tid("thread-conc")
    results = _concurrently(
        [
            lambda i=i: service.submit_background(_request(thread_id, f"msg-{i}", agent_id="blocking"))
            for i in range(5)
        ]
    )
    assert all(isinstance(r, service.SubmitResult) for r in results), results
    assert sum(r.status is service.SubmitStatus.RUNNING for r in results) == 1
    assert len(store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])) <= 1
    assert RECORDER.started.wait(10)
    assert len(store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])) == 1

    RECORDER.release.set()
    for result in results:
        _status(result.dispatch_id, DispatchStatus.ACKED)
    with RECORDER.lock:
        assert sorted(c.dispatch_id or "" for c in RECORDER.calls) == sorted(r.dispatch_id for r in results)


def test_concurrent_foreground_submits_on_one_thread_claim_one_at_a_time(worker: Any) -> None:
    """seed: concurrent_submit_same_thread_only_one_claims"""
    thread_id = _tid("thread-stream-conc")
    results = _concurrently([lambda i=i: service.submit(_request(thread_id, f"msg-{i}")) for i in range(3)])
    ok = [r for r in results if isinstance(r, service.SubmitResult)]
    failed = [r for r in results if not isinstance(r, service.SubmitResult)]
    assert ok, results
    assert all(isinstance(r, service.ActiveRunConflict) for r in failed), failed
    assert len(store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])) <= 1
    for result in ok:
        _run_when(result.run_id, RunStatus.DONE)
    wait_until(
        lambda: store.list_dispatches(thread_id, [DispatchStatus.CLAIMED, DispatchStatus.QUEUED]) == []
    )


def test_interrupt_between_claim_and_start_supersedes_without_running(engine: Any) -> None:
    """seed: interrupt_between_claim_and_execution_supersedes_without_runtime_start"""
    thread_id = _tid("thread-epoch-race")
    dispatch = _enqueue_prepared(thread_id, "go")
    claimed = store.claim(thread_id, consumer_id(), 1_000, now_ms())
    assert [d.dispatch_id for d in claimed] == [dispatch.dispatch_id]

    details = service.interrupt_detailed(thread_id)
    assert details.active_dispatch is not None and details.active_dispatch.dispatch_id == dispatch.dispatch_id

    report = execute_claimed(claimed[0])
    assert report.final_status == "superseded"
    assert RECORDER.calls == [], "a stale dispatch never enters the executor"
    loaded = store.load_dispatch(dispatch.dispatch_id)
    assert loaded is not None and loaded.status is DispatchStatus.SUPERSEDED
    assert loaded.claim_token is None and loaded.lease_until is None
    assert loaded.dispatch_instance_id is None
    run = run_store.load_run(run_id=dispatch.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert run.termination_reason is not None and run.termination_reason.type == "cancelled"
    assert run.dispatch_id == dispatch.dispatch_id
    # no run_start was ever emitted; the run's end is, so a stream following it closes
    assert [
        (e.type, e.data["status"], e.data["termination"]["type"]) for e in events.read_events(dispatch.run_id)
    ] == [("run_finish", "done", "cancelled")]


def test_foreground_submit_cancels_remote_active_run_then_claims(engine: Any) -> None:
    """seed: foreground_submit_sends_live_cancel_for_remote_active_dispatch"""
    thread_id = _tid("thread-remote-foreground")
    active = _enqueue_prepared(thread_id, "active")
    claimed = store.claim_dispatch(active.dispatch_id, "remote-consumer", 30_000, now_ms())
    assert claimed is not None and claimed.claim_token
    captured: list[dict[str, Any]] = []

    def remote_forwarder(command: dict[str, Any]) -> bool:
        """The other process: on cancel it stops its run and releases its claim (ack, or superseded)."""
        captured.append(command)
        if command.get("kind") == "cancel":
            try:
                store.ack(active.dispatch_id, claimed.claim_token or "", now_ms())
            except Exception:  # noqa: BLE001 - a stale-epoch ack supersedes instead; both release
                pass
            finally:
                connection.close()
        return True

    subscription = LiveSubscription(
        LiveRunTarget(thread_id, active.run_id, active.dispatch_id), remote_forwarder
    )
    try:
        submitted = service.submit(_request(thread_id, "replacement"))
    finally:
        subscription.close()

    assert submitted.status is service.SubmitStatus.RUNNING
    assert submitted.dispatch_id != active.dispatch_id
    assert {"kind": "cancel"} in captured
    released = store.load_dispatch(active.dispatch_id)
    assert released is not None and released.status in {DispatchStatus.ACKED, DispatchStatus.SUPERSEDED}
    claims = store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])
    assert [d.dispatch_id for d in claims] == [submitted.dispatch_id]


def test_foreground_submit_conflicts_when_local_cancel_does_not_release_claim(engine: Any) -> None:
    """seed: foreground_submit_waits_for_local_cancelled_dispatch_to_release_claim"""
    engine.AWAKEN_MAILBOX = LONG_LEASE  # no lease renewal (which would supersede it) within the wait
    engine.AWAKEN_REMOTE_CANCEL_WAIT_MS = 300
    thread_id = _tid("thread-local-cancel-window")
    active = _enqueue_prepared(thread_id, "active", agent_id="stubborn")
    claimed = store.claim(thread_id, consumer_id(), LONG_LEASE.lease_ms, now_ms())
    assert [d.dispatch_id for d in claimed] == [active.dispatch_id]

    def execute() -> None:
        try:
            execute_claimed(claimed[0])
        finally:
            connection.close()

    runner = threading.Thread(target=execute, daemon=True)
    runner.start()
    assert RECORDER.started.wait(10)

    with pytest.raises(service.ActiveRunConflict):
        service.submit(_request(thread_id, "replacement"))

    (local,) = local_runs()
    assert local.dispatch_id == active.dispatch_id and local.cancel_event.is_set(), "local cancel delivered"
    assert [m.text for m in run_store.load_messages(thread_id=thread_id) or []] == ["active"]
    dispatches = store.list_dispatches(thread_id)
    assert [(d.dispatch_id, d.status) for d in dispatches] == [(active.dispatch_id, DispatchStatus.CLAIMED)]
    assert run_store.list_runs(thread_id=thread_id).total == 1

    RECORDER.release.set()
    runner.join(15)
    assert STUBBORN_SAW_CANCEL == [True]
    final = store.load_dispatch(active.dispatch_id)
    assert final is not None and final.status is DispatchStatus.SUPERSEDED, "the stale claim never acks"


def test_empty_inline_claim_cancels_the_precreated_run(engine: Any) -> None:
    """seed: submit_inline_claim_empty_cancels_precreated_run

    Another consumer claims the thread between the submit's interrupt and its inline claim (the submit
    is held at its thread-row lock meanwhile): the inline claim finds nothing and the submit answers 409.
    The reference cancels the dispatch and finishes the pre-created run as cancelled; here the run, its
    message and the dispatch are written in the transaction that claims inline, so a lost claim leaves
    nothing of the submit behind (no half-written state) — the interrupt's own effects stay (§7.2).
    """

    thread_id = _tid("thread-inline-empty")
    run_store.ensure_thread(thread_id=thread_id)
    outcome: list[Any] = []

    def submit() -> None:
        try:
            outcome.append(service.submit(_request(thread_id, "go")))
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            outcome.append(exc)
        finally:
            connection.close()

    with transaction.atomic():
        Thread.objects.select_for_update().get(id=thread_id)  # holds prepare_run_for_dispatch back
        submitter = threading.Thread(target=submit, daemon=True)
        submitter.start()
        wait_until(lambda: store.current_dispatch_epoch(thread_id) == 1, what="the submit's interrupt")
        other = store.enqueue(
            DispatchRecord(dispatch_id=f"other-{thread_id}", thread_id=thread_id, run_id="run-other")
        )
        assert store.claim_dispatch(other.dispatch_id, "other-consumer", 30_000, now_ms()) is not None
    submitter.join(15)

    assert len(outcome) == 1 and isinstance(outcome[0], service.ActiveRunConflict), outcome
    assert service.ACTIVE_RUN_CONFLICT_MESSAGE in str(outcome[0])
    mine = [d for d in store.list_dispatches(thread_id) if d.dispatch_id != other.dispatch_id]
    assert mine == []
    assert run_store.list_runs(thread_id=thread_id).items == []
    assert run_store.load_messages(thread_id=thread_id) is None
    assert store.load_dispatch(other.dispatch_id).status is DispatchStatus.CLAIMED  # type: ignore[union-attr]


def test_drain_on_a_claimed_thread_leaves_the_claim_and_run_untouched(engine: Any) -> None:
    """seed: worker_status_not_corrupted_after_empty_claim

    The doorbell/drain path on a thread whose dispatch is claimed (running elsewhere) claims nothing and
    leaves that claim exactly as it was.
    """

    thread_id = _tid("thread-guard")
    result = service.submit_background(_request(thread_id, "a"))
    before = store.load_dispatch(result.dispatch_id)
    assert before is not None and before.status is DispatchStatus.CLAIMED
    queued = _enqueue_prepared(thread_id, "b")

    assert drain_thread(thread_id) is DispatchAttempt.NO_ELIGIBLE
    assert store.claim_dispatch(queued.dispatch_id, "another-worker", 30_000, now_ms()) is None
    assert store.load_dispatch(result.dispatch_id) == before
    assert store.load_dispatch(queued.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]
    assert RECORDER.calls == []
