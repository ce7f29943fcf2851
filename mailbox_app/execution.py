"""The execution flow of one claimed dispatch, and draining a thread (spec §4.12).

claim (store) -> per-thread Redis lock (value = claim token) -> epoch check / supersede before start ->
reconstruct -> record_dispatch_start -> executor beside a lease renewer and a live-command listener ->
record_run_result -> ack / nack with backoff / dead letter -> terminalize the run -> release -> next.
Nothing correct depends on this process's memory: PostgreSQL fences every write with the claim token.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from enum import StrEnum

from django.conf import settings
from django.db import close_old_connections, connection

from mailbox_app import store
from mailbox_app.errors import NotFound, StoreError, VersionConflict
from mailbox_app.executor import OutcomeKind
from mailbox_app.ids import now_ms, uuid7
from mailbox_app.live import LiveRunTarget, LiveSubscription
from mailbox_app.locks import ThreadLock
from mailbox_app.payloads import RunRecord
from mailbox_app.ports import run_store
from mailbox_app.preparation import reconstruct_run_request
from mailbox_app.reconcile import terminalize_run_for_dispatch
from mailbox_app.records import DispatchRecord
from mailbox_app.retry import nack_backoff_ms
from mailbox_app.runtime import ActiveRun, finished_run_result, run_activation
from mailbox_app.states import RunStatus

log = logging.getLogger(__name__)
MAX_DRAIN = 1000  # dispatches one drain runs before handing the thread back to a fresh doorbell


class DispatchAttempt(StrEnum):
    CLAIMED = "claimed"
    BUSY = "busy"
    NO_ELIGIBLE = "no_eligible"
    TRANSIENT_ERROR = "transient_error"


def consumer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fault(point: str) -> None:
    """Test hook: die at a named step when AWAKEN_FAULT_POINT names it (crash-recovery tests)."""
    if getattr(settings, "AWAKEN_FAULT_POINT", "") == point:
        os._exit(137)


# --- local registry of the runs this process executes (for local cancel / steer / decide) -----------

_registry_lock = threading.Lock()
_registry: dict[str, ActiveRun] = {}


def local_runs() -> list[ActiveRun]:
    with _registry_lock:
        return list(_registry.values())


def find_local_run(identifier: str) -> ActiveRun | None:
    """By dispatch id, run id or thread id; None when ambiguous or absent."""
    with _registry_lock:
        hits = [a for a in _registry.values() if identifier in {a.dispatch_id, a.run_id, a.thread_id}]
    return hits[0] if len(hits) == 1 else None


# --- lease renewal ---------------------------------------------------------------------------------


class LeaseRenewer:
    """Renews the dispatch lease and the Redis lock every `lease_renewal_interval_ms` on its own thread
    (with its own DB connection). On loss it cancels this run only and marks it so nothing is acked."""

    def __init__(self, dispatch: DispatchRecord, lock: ThreadLock, active: ActiveRun) -> None:
        self._dispatch = dispatch
        self._lock = lock
        self._active = active
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{dispatch.dispatch_id}", daemon=True)

    def start(self) -> LeaseRenewer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        config = settings.AWAKEN_MAILBOX
        try:
            while not self._stop.wait(config.lease_renewal_interval_ms / 1000):
                lease = config.suspended_lease_ms if self._active.suspended.is_set() else config.lease_ms
                try:
                    renewed = store.extend_lease(
                        self._dispatch.dispatch_id, self._dispatch.claim_token or "", lease, now_ms()
                    )
                except Exception:
                    log.exception("lease renewal failed for %s", self._dispatch.dispatch_id)
                    continue
                if not renewed:
                    log.warning("lease lost for dispatch %s; cancelling its run", self._dispatch.dispatch_id)
                    self._active.lease_lost.set()
                    self._active.cancel_event.set()
                    return
                self._lock.extend(lease)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- one claimed dispatch --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    dispatch_id: str
    final_status: str


def execute_claimed(dispatch: DispatchRecord) -> ExecutionReport:
    """Run one claimed dispatch to a terminal or requeued state. Never raises for store races."""
    token = dispatch.claim_token or ""
    config = settings.AWAKEN_MAILBOX
    lock = ThreadLock(dispatch.thread_id, token, config.lease_ms)
    if not lock.acquire():
        return _lock_busy(dispatch)
    try:
        fault("after_claim")
        if store.current_dispatch_epoch(dispatch.thread_id) > dispatch.dispatch_epoch:
            superseded = store.supersede_claimed(
                dispatch.dispatch_id, token, now_ms(), "claimed dispatch superseded before runtime start"
            )
            terminalize_run_for_dispatch(superseded)
            return ExecutionReport(dispatch.dispatch_id, "superseded")
        finished = _finished_run(dispatch)
        if finished is not None:
            return _settle_finished_run(dispatch, finished)
        try:
            request = reconstruct_run_request(dispatch)
        except StoreError as exc:
            return _dead_letter(dispatch, f"reconstruct failed: {exc}")
        instance_id = uuid7()
        try:
            store.record_dispatch_start(dispatch.dispatch_id, token, instance_id, now_ms())
        except (VersionConflict, NotFound):
            current = store.load_dispatch(dispatch.dispatch_id)
            terminalize_run_for_dispatch(current)
            return ExecutionReport(dispatch.dispatch_id, current.status.value if current else "missing")
        return _run_with_lease(dispatch, request.with_(session_id=instance_id), instance_id, lock)
    finally:
        lock.release()


def _finished_run(dispatch: DispatchRecord) -> RunRecord | None:
    run = run_store().load_run(run_id=dispatch.run_id)
    if run is None or run.thread_id != dispatch.thread_id or run.status is not RunStatus.DONE:
        return None
    return run


def _settle_finished_run(dispatch: DispatchRecord, run: RunRecord) -> ExecutionReport:
    """The run is already done: typically its worker died after checkpointing Done and recording the
    result but before the ack, and the sweep requeued the claim. Never run the agent again (the intent
    would complete twice, and the Done -> Running checkpoint is refused): restore the dispatch's trace
    from the run record (the instance that finished it) and settle the dispatch as completed."""
    token = dispatch.claim_token or ""
    same = run.dispatch_id == dispatch.dispatch_id and run.session_id
    instance_id = run.session_id if same and run.session_id else uuid7()
    try:
        store.record_dispatch_start(dispatch.dispatch_id, token, instance_id, now_ms())
    except (VersionConflict, NotFound):
        current = store.load_dispatch(dispatch.dispatch_id)
        terminalize_run_for_dispatch(current)
        return ExecutionReport(dispatch.dispatch_id, current.status.value if current else "missing")
    return _settle(dispatch, OutcomeKind.COMPLETED, None, finished_run_result(dispatch, instance_id, run))


def _lock_busy(dispatch: DispatchRecord) -> ExecutionReport:
    """Another process still executes this thread (its old claim was reclaimed while it ran on)."""
    holder, ttl_ms = ThreadLock.holder(dispatch.thread_id)
    if holder == dispatch.claim_token:
        # This very claim is being executed (a duplicate doorbell, or a dead worker whose lock has not
        # expired yet): leave it alone; its lease decides, and the sweep reclaims it if it is dead.
        return ExecutionReport(dispatch.dispatch_id, "busy")
    retry_at = now_ms() + max(ttl_ms, 100)
    try:
        store.nack(
            dispatch.dispatch_id,
            dispatch.claim_token or "",
            retry_at,
            "thread lock held by another worker",
            now_ms(),
        )
    except (VersionConflict, NotFound):
        return ExecutionReport(dispatch.dispatch_id, "lost")
    from mailbox_app import signals

    signals.ring_at(dispatch.thread_id, dispatch.dispatch_id, retry_at)
    return ExecutionReport(dispatch.dispatch_id, "queued")


def _dead_letter(dispatch: DispatchRecord, reason: str) -> ExecutionReport:
    dead: DispatchRecord | None
    try:
        dead = store.dead_letter(dispatch.dispatch_id, dispatch.claim_token or "", reason, now_ms())
    except (VersionConflict, NotFound):
        dead = store.load_dispatch(dispatch.dispatch_id)
    terminalize_run_for_dispatch(dead)
    return ExecutionReport(dispatch.dispatch_id, dead.status.value if dead else "missing")


def _run_with_lease(
    dispatch: DispatchRecord, request_: object, instance_id: str, lock: ThreadLock
) -> ExecutionReport:
    from mailbox_app.requests import RunRequest

    assert isinstance(request_, RunRequest)
    active = ActiveRun(thread_id=dispatch.thread_id, run_id=dispatch.run_id, dispatch_id=dispatch.dispatch_id)
    with _registry_lock:
        _registry[dispatch.dispatch_id] = active
    subscription = LiveSubscription(
        LiveRunTarget(dispatch.thread_id, dispatch.run_id, dispatch.dispatch_id), active.on_live_command
    )
    renewer = LeaseRenewer(dispatch, lock, active).start()
    try:
        fault("mid_run")
        outcome, result = run_activation(dispatch, request_, instance_id, active)
    finally:
        renewer.stop()
        subscription.close()
        with _registry_lock:
            _registry.pop(dispatch.dispatch_id, None)
    # The agent has returned: free the thread now. Settling is fenced by the claim token in PostgreSQL;
    # holding the lock across the ack made a successor claimed by another process right after the ack
    # find it taken, get nacked (an attempt charged) and wait out the lock's whole TTL.
    lock.release()
    if active.lease_lost.is_set():
        return ExecutionReport(dispatch.dispatch_id, "lease_lost")
    return _settle(dispatch, outcome.kind, outcome.message, result)


def _settle(
    dispatch: DispatchRecord, kind: OutcomeKind, message: str | None, result: object
) -> ExecutionReport:
    """record_run_result, then ack / nack / dead letter; a lost fence means someone else decided."""
    from mailbox_app.records import RunDispatchResult

    assert isinstance(result, RunDispatchResult)
    token = dispatch.claim_token or ""
    try:
        store.record_run_result(dispatch.dispatch_id, token, result, now_ms())
        fault("after_result")
        if kind is OutcomeKind.COMPLETED:
            settled = store.ack(dispatch.dispatch_id, token, now_ms())
        elif kind is OutcomeKind.TRANSIENT_ERROR:
            now = now_ms()
            retry_at = now + nack_backoff_ms(
                dispatch.attempt_count,
                base_ms=settings.AWAKEN_MAILBOX.default_retry_delay_ms,
                max_ms=settings.AWAKEN_MAILBOX.max_retry_delay_ms,
            )
            settled = store.nack(dispatch.dispatch_id, token, retry_at, message or "transient error", now)
            if not settled.is_terminal:
                from mailbox_app import signals

                signals.ring_at(dispatch.thread_id, dispatch.dispatch_id, retry_at)
        else:
            settled = store.dead_letter(dispatch.dispatch_id, token, message or "permanent error", now_ms())
    except (VersionConflict, NotFound):
        current = store.load_dispatch(dispatch.dispatch_id)
        terminalize_run_for_dispatch(current)
        return ExecutionReport(dispatch.dispatch_id, current.status.value if current else "missing")
    terminalize_run_for_dispatch(settled)
    return ExecutionReport(dispatch.dispatch_id, settled.status.value)


# --- draining a thread -----------------------------------------------------------------------------


def drain_thread(thread_id: str, *, first: DispatchRecord | None = None) -> DispatchAttempt:
    """Execute `first` (already claimed) and then every eligible dispatch of the thread, one at a time."""
    attempt = DispatchAttempt.NO_ELIGIBLE
    config = settings.AWAKEN_MAILBOX
    dispatch = first
    for _ in range(MAX_DRAIN):
        if dispatch is None:
            close_old_connections()
            try:
                claimed = store.claim(thread_id, consumer_id(), config.lease_ms, now_ms())
            except Exception:
                log.exception("claim failed for thread %s", thread_id)
                return DispatchAttempt.TRANSIENT_ERROR if attempt is DispatchAttempt.NO_ELIGIBLE else attempt
            if not claimed:
                return attempt
            dispatch = claimed[0]
        try:
            execute_claimed(dispatch)
        except Exception:
            log.exception("execution of dispatch %s failed; its lease will expire", dispatch.dispatch_id)
            return DispatchAttempt.TRANSIENT_ERROR
        attempt = DispatchAttempt.CLAIMED
        dispatch = None
    from mailbox_app import signals

    signals.ring_on_commit(thread_id, None)
    return attempt
