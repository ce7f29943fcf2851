"""Test executors (the user's plug-in may be doubled; the store may not): counting, recording, blocking,
immediate-cancel, no-op — like the reference's test runtimes — plus a stubborn one (ignores a cancel until
released) and one that suspends on a background task which later wakes it."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from django.db import connection

from mailbox_app.agents.base import RunContext, RunResult
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import TerminationReason
from mailbox_app.contract.suspension import RunWaitingState
from mailbox_app.observability import log_context
from runs_app import store as run_store
from tests.support.waiting import wait_until


@dataclass
class Recorder:
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: list[RunRequest] = field(default_factory=list)
    spans: list[tuple[str, str, float, float]] = field(default_factory=list)  # thread, run, start, end
    release: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.spans.clear()
        self.release.clear()
        self.started.clear()


RECORDER = Recorder()


class CountingAgent:
    """Counts calls and answers immediately."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        with RECORDER.lock:
            RECORDER.calls.append(request)
        return RunResult(final_output="counted", messages=(ChatMessage.assistant("counted"),))


class RecordingAgent:
    """Records start/end times per thread (to prove no two runs of a thread overlap)."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        start = time.monotonic()
        with RECORDER.lock:
            RECORDER.calls.append(request)
        time.sleep(0.02)
        end = time.monotonic()
        with RECORDER.lock:
            RECORDER.spans.append((context.thread_id, context.run_id, start, end))
        return RunResult(final_output="recorded")


class BlockingAgent:
    """Blocks until `RECORDER.release` is set or the run is cancelled."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        with RECORDER.lock:
            RECORDER.calls.append(request)
        RECORDER.started.set()
        deadline = time.monotonic() + 30
        while not RECORDER.release.is_set() and time.monotonic() < deadline:
            if context.wait_cancelled(0.02):
                return RunResult(termination=TerminationReason(type="cancelled"))
        return RunResult(final_output="released")


LOG_CONTEXTS: list[tuple[str | None, str | None]] = []


class LogContextAgent:
    """Logs a line and records the run and thread its log records are bound to (log_context.py)."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        logging.getLogger("tests.agents").info("agent working")
        bound = log_context.current()
        LOG_CONTEXTS.append((bound.run_id, bound.thread_id))
        return RunResult(final_output="logged")


class NoopAgent:
    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        return RunResult()


TEST_AGENTS = {
    "counting": "tests.support.agents.CountingAgent",
    "recording": "tests.support.agents.RecordingAgent",
    "blocking": "tests.support.agents.BlockingAgent",
    "noop": "tests.support.agents.NoopAgent",
    "log-context": "tests.support.agents.LogContextAgent",
}


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
