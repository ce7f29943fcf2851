"""The worker's local registry of running runs (mailbox_app/worker/registry.py)."""

from __future__ import annotations

from typing import Any

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.services import mailbox
from mailbox_app.worker.registry import local_runs
from runs_app import store as run_store
from tests.support.agents import RECORDER
from tests.support.engine import dispatch_in, run_in
from tests.support.runs import fresh_thread_id, user_request
from tests.support.waiting import wait_until


def test_local_registry_tracks_only_running_runs_and_projection_clears(worker: Any) -> None:
    """seed: gc_idle_workers_keeps_worker_with_queued_dispatches
    seed: gc_idle_workers_removes_idle_with_no_dispatches
    seed: thread_context_cache_cleared_on_idle_transition
    """
    thread_id = fresh_thread_id("thread-registry")
    first = mailbox.submit_background(user_request(thread_id, "first", agent_id="blocking"))
    assert RECORDER.started.wait(10)
    running = local_runs()
    assert [(a.thread_id, a.run_id, a.dispatch_id) for a in running] == [
        (thread_id, first.run_id, first.dispatch_id)
    ]
    thread = run_store.load_thread(thread_id=thread_id)
    assert thread is not None and thread.active_run_id == first.run_id

    second = mailbox.submit_background(user_request(thread_id, "second", agent_id="blocking"))
    assert second.status is mailbox.SubmitStatus.QUEUED
    assert [a.dispatch_id for a in local_runs()] == [first.dispatch_id], "queued work holds no local state"

    RECORDER.release.set()
    run_in(first.run_id, RunStatus.DONE)
    run_in(second.run_id, RunStatus.DONE)
    dispatch_in(second.dispatch_id, DispatchStatus.ACKED)
    wait_until(lambda: local_runs() == [], what="local registry emptied")
    thread = run_store.load_thread(thread_id=thread_id)
    assert thread is not None and thread.active_run_id is None and thread.open_run_id is None
