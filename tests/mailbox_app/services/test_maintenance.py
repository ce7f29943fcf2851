"""Maintenance (mailbox_app/services/maintenance.py and its beat tasks): recover, sweep, reconcile and GC, and
startup recovery — the reference's lifecycle, wired to Celery's `worker_ready` — on real Celery workers
(thread pool) and the real Redis broker in this process. Failures are injected through PostgreSQL itself
(a lock held by another connection plus `lock_timeout`), never by faking the store.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery.signals import worker_ready
from django.db import DatabaseError

from mailbox_app import store, tasks
from mailbox_app.contract.config import MailboxConfig
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.requests import AdapterKind, RunMode, RunOrigin
from mailbox_app.contract.storage import RunRecord
from mailbox_app.contract.suspension import RunWaitingState
from mailbox_app.realtime import doorbells
from mailbox_app.services import mailbox, maintenance
from mailbox_app.store import conformance
from runs_app import store as run_store
from tests.support.agents import RECORDER
from tests.support.engine import (
    LONG_LEASE,
    HeldLock,
    calls_for,
    concurrently,
    dispatch_in,
    fast_polling_worker,
    lock_timeout,
    run_in,
)
from tests.support.runs import enqueue_prepared, fresh_thread_id, user_request
from tests.support.waiting import wait_until


@pytest.mark.django_db
def test_recover_reconciles_runs_behind_cancelled_and_superseded_dispatches() -> None:
    """seed: recover_reconciles_terminal_cancelled_and_superseded_dispatches_after_crash"""
    cancelled = enqueue_prepared("thread-reconcile-cancel", "cancel", "agent")
    superseded = enqueue_prepared("thread-reconcile-supersede", "supersede", "agent")
    assert store.cancel(cancelled.dispatch_id, now_ms()) is not None
    assert conformance.interrupt("thread-reconcile-supersede", now_ms()).superseded_count == 1
    for submitted in (cancelled, superseded):
        before = run_store.load_run(run_id=submitted.run_id)
        assert before is not None and before.status is RunStatus.CREATED and before.dispatch_id is None

    report = maintenance.recover()
    assert (report.reclaimed, report.redriven, report.woken) == (0, 0, 0)
    assert report.reconciled == 2

    for submitted in (cancelled, superseded):
        run = run_store.load_run(run_id=submitted.run_id)
        assert run is not None and run.status is RunStatus.DONE
        assert run.termination_reason is not None and run.termination_reason.type == "cancelled"
        assert run.dispatch_id == submitted.dispatch_id
    assert maintenance.recover().reconciled == 0, "idempotent"


@pytest.mark.django_db
def test_sweep_dead_letters_expired_claim_at_max_attempts_and_errors_run() -> None:
    """seed: reclaim_dead_letter_marks_run_error"""
    dispatch = enqueue_prepared("thread-reclaim-dead", "expire", "agent", max_attempts=1, available_at=1000)
    claimed = store.claim("thread-reclaim-dead", "stale-consumer", 100, 1000)
    assert len(claimed) == 1 and claimed[0].lease_until == 1100

    report = maintenance.sweep()
    assert (report.reclaimed, report.dead_lettered, report.reconciled) == (1, 1, 1)

    dead = store.load_dispatch(dispatch.dispatch_id)
    assert dead is not None and dead.status is DispatchStatus.DEAD_LETTER
    assert dead.attempt_count == 1
    run = run_store.load_run(run_id=dispatch.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert run.termination_reason is not None and run.termination_reason.type == "error"
    assert run.dispatch_id == dispatch.dispatch_id
    assert run.error_payload == {"message": dead.last_error}


@pytest.mark.django_db
def test_reconcile_task_repairs_run_left_behind_a_dead_letter() -> None:
    """seed: sweep_reconciles_dead_letter_dispatch_after_crash"""
    dispatch = enqueue_prepared("thread-sweep-dead", "dead", "agent", available_at=1)
    claimed = store.claim("thread-sweep-dead", "stale-consumer", 100, now_ms())
    assert claimed and claimed[0].claim_token
    conformance.dead_letter(
        dispatch.dispatch_id, claimed[0].claim_token, "crashed after dead_letter", now_ms()
    )
    before = run_store.load_run(run_id=dispatch.run_id)
    assert before is not None and before.status is RunStatus.CREATED

    assert tasks.reconcile() == 1  # the `mailbox.reconcile` beat task, every sweep interval

    run = run_store.load_run(run_id=dispatch.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert run.termination_reason is not None and run.termination_reason.type == "error"
    assert run.termination_reason.value == "crashed after dead_letter"
    assert run.error_payload == {"message": "crashed after dead_letter"}
    assert run.dispatch_id == dispatch.dispatch_id
    assert tasks.reconcile() == 0


@pytest.mark.django_db
def test_gc_is_harmless_when_empty_and_purges_only_old_terminal_rows(settings: Any) -> None:
    """seed: gc_idle_workers_noop_when_empty"""
    settings.AWAKEN_MAILBOX = MailboxConfig()
    assert maintenance.gc() == 0
    assert tasks.gc() == 0
    old = store.enqueue(
        DispatchRecord(
            dispatch_id="d-old", thread_id="thread-gc", run_id="r-old", created_at=1000, updated_at=1000
        )
    )
    token = store.claim("thread-gc", "c", 100, 1000)[0].claim_token
    assert token is not None
    conformance.ack(old.dispatch_id, token, 1000)
    fresh = enqueue_prepared("thread-gc", "still queued", "agent")
    assert maintenance.gc() == 1
    assert store.load_dispatch("d-old") is None
    assert store.load_dispatch(fresh.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]


def test_startup_recovery_defaults_and_wiring() -> None:
    """seed: mailbox_lifecycle_config_defaults

    Startup recovery is the worker_ready hook; without AWAKEN_* overrides it makes 3 attempts 250 ms
    apart (the reference defaults to 1 attempt; ours retries a briefly unavailable database).
    """

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWAKEN_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
    probe = (
        "import awaken_project.settings as s; "
        "print(s.AWAKEN_STARTUP_RECOVERY_MAX_ATTEMPTS, s.AWAKEN_STARTUP_RECOVERY_RETRY_DELAY_MS)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["3", "250"]
    receivers = [key for key, _ in worker_ready.receivers]
    assert any(key[0] == "mailbox_recover" for key in receivers), "startup recovery runs on worker_ready"


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
    logger = logging.getLogger("mailbox_app.services.maintenance")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _expired_claim(thread_id: str, agent_id: str = "counting") -> DispatchRecord:
    """A dispatch claimed by a consumer that died: its 1 ms lease is already over."""
    dispatch = enqueue_prepared(thread_id, "recover stale", agent_id)
    claim_now = dispatch.available_at
    claimed = store.claim(thread_id, "dead-consumer", 1, claim_now)
    assert len(claimed) == 1 and claimed[0].lease_until == claim_now + 1
    wait_until(lambda: now_ms() > claim_now + 1)
    return claimed[0]


def test_startup_recovery_runs_existing_queued_dispatches(worker: Any) -> None:
    """seed: start_lifecycle_runs_startup_recovery_for_existing_queued_dispatches"""
    thread_id = fresh_thread_id("thread-recover")
    dispatch = enqueue_prepared(thread_id, "recover me", agent_id="missing-agent")
    assert store.load_dispatch(dispatch.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]

    worker_ready.send(sender=None)  # what a starting worker does: run startup recovery

    dead = dispatch_in(dispatch.dispatch_id, DispatchStatus.DEAD_LETTER)
    assert dead.last_error is not None and "missing-agent" in dead.last_error
    run = run_in(dispatch.run_id, RunStatus.DONE)
    assert run.termination_reason is not None and run.termination_reason.type == "error"


def test_startup_recovery_reclaims_expired_claims_and_executes_them(worker: Any) -> None:
    """seed: start_lifecycle_reclaims_expired_claimed_dispatches_and_executes_them"""
    thread_id = fresh_thread_id("thread-stale")
    stale = _expired_claim(thread_id, agent_id="missing-agent")

    report = maintenance.recover()
    assert report.reclaimed == 1

    dead = dispatch_in(stale.dispatch_id, DispatchStatus.DEAD_LETTER)
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
    thread_id = fresh_thread_id("thread-recover-fail")
    stale = _expired_claim(thread_id)

    with lock_timeout(), HeldLock("LOCK TABLE mailbox_dispatch IN ACCESS EXCLUSIVE MODE"):
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
    _expired_claim(fresh_thread_id("thread-recover-zero"))
    with (
        lock_timeout(),
        HeldLock("LOCK TABLE mailbox_dispatch IN ACCESS EXCLUSIVE MODE"),
        _retry_warnings() as warnings,
        pytest.raises(DatabaseError),
    ):
        maintenance.recover_with_retry(attempts=0, delay_ms=0)
    assert warnings.count == 0, f"attempts=0 must mean one attempt, saw {warnings.count} retries"


def test_startup_recovery_retries_until_the_database_answers(worker: Any) -> None:
    """seed: start_lifecycle_ready_retries_startup_recovery_until_ready"""
    thread_id = fresh_thread_id("thread-retry-recover")
    dispatch = enqueue_prepared(thread_id, "recover", agent_id="missing-agent")

    # the first attempt fails on the held lock; its retry warning releases the lock before the retry
    with (
        lock_timeout(),
        HeldLock("LOCK TABLE mailbox_dispatch IN ACCESS EXCLUSIVE MODE") as lock,
        _retry_warnings(action=lock.release) as warnings,
    ):
        report = maintenance.recover_with_retry(attempts=2, delay_ms=50)
    assert warnings.count == 1
    assert report.redriven >= 1

    dead = dispatch_in(dispatch.dispatch_id, DispatchStatus.DEAD_LETTER)
    assert dead.last_error is not None and "missing-agent" in dead.last_error


def test_concurrent_recoveries_reclaim_once_and_run_each_dispatch_once(worker: Any) -> None:
    """seed: start_lifecycle_ready_serializes_concurrent_recovery
    seed: concurrent_start_lifecycle_is_idempotent
    """
    stale = _expired_claim(fresh_thread_id("thread-conc-stale"))
    queued = [enqueue_prepared(fresh_thread_id("thread-conc-queued"), f"queued {i}") for i in range(2)]

    reports = concurrently([maintenance.recover for _ in range(8)])
    assert all(isinstance(r, maintenance.RecoveryReport) for r in reports), reports
    assert sum(r.reclaimed for r in reports) == 1, "the expired claim is reclaimed exactly once"

    for dispatch in [stale, *queued]:
        dispatch_in(dispatch.dispatch_id, DispatchStatus.ACKED)
        assert calls_for(dispatch.dispatch_id) == 1, "acked dispatches can never be claimed again"


def test_doorbell_and_startup_recovery_together_run_a_dispatch_once(worker: Any) -> None:
    """seed: start_lifecycle_does_not_bypass_ready_transition"""
    thread_id = fresh_thread_id("thread-ring-and-recover")
    dispatch = enqueue_prepared(thread_id, "once")
    doorbells.ring_on_commit(thread_id, dispatch.dispatch_id)  # autocommit: rings now
    worker_ready.send(sender=None)
    maintenance.recover()
    dispatch_in(dispatch.dispatch_id, DispatchStatus.ACKED)
    assert calls_for(dispatch.dispatch_id) == 1
    assert store.list_dispatches(thread_id, [DispatchStatus.QUEUED, DispatchStatus.CLAIMED]) == []


def test_doorbells_survive_without_a_worker_and_recovery_is_idempotent(engine: Any) -> None:
    """seed: start_lifecycle_is_idempotent_and_drop_does_not_abort_recovery
    seed: start_lifecycle_handle_drop_keeps_lifecycle_running

    No worker is running: a submit's hand-over and a recovery's doorbells are durable broker messages,
    so the work they announce runs once a worker starts; a second recovery changes nothing.
    """
    engine.AWAKEN_MAILBOX = LONG_LEASE
    submitted = mailbox.submit_background(user_request(fresh_thread_id("thread-no-worker"), "handed over"))
    assert submitted.status is mailbox.SubmitStatus.RUNNING
    claimed = store.load_dispatch(submitted.dispatch_id)
    assert claimed is not None and claimed.status is DispatchStatus.CLAIMED
    queued = enqueue_prepared(fresh_thread_id("thread-recovered"), "recovered")

    first = maintenance.recover()
    second = maintenance.recover()
    assert (first.reclaimed, first.redriven) == (0, 1)
    assert (second.reclaimed, second.reconciled, second.redriven) == (0, 0, 1)
    assert store.load_dispatch(submitted.dispatch_id) == claimed, "recovery leaves a live claim alone"
    assert store.load_dispatch(queued.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]

    with (
        fast_polling_worker()
    ):  # a test worker sends no worker_ready: only the earlier doorbells can start this work
        dispatch_in(submitted.dispatch_id, DispatchStatus.ACKED)
        dispatch_in(queued.dispatch_id, DispatchStatus.ACKED)
    assert calls_for(submitted.dispatch_id) == 1
    assert calls_for(queued.dispatch_id) == 1


def test_recover_wakes_only_orphaned_background_task_waits(worker: Any) -> None:
    """seed: recover_only_enqueues_orphaned_background_task_waiting_runs"""
    bg_thread, user_thread = fresh_thread_id("thread-bg-recover"), fresh_thread_id("thread-user-recover")
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
    run_in(f"run-bg-{bg_thread}", RunStatus.DONE)
    with RECORDER.lock:
        wake = RECORDER.calls[0]
    assert wake.thread_id == bg_thread
    assert wake.continue_run_id == f"run-bg-{bg_thread}"
    assert wake.adapter is AdapterKind.INTERNAL
    assert wake.origin is RunOrigin.INTERNAL
    assert store.list_dispatches(user_thread) == [], "user-input waits stay suspended"
    assert maintenance.recover().woken == 0, "nothing is orphaned any more"
    assert wake.run_mode is RunMode.INTERNAL_WAKE, f"a recovery wake is internal_wake, got {wake.run_mode}"
