"""The runs this process executes, for local cancel / steer / decide (its consumer id: contract.ids)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from mailbox_app.contract.mailbox import LiveRunTarget

if TYPE_CHECKING:  # the registry holds them; it never calls into the runtime
    from mailbox_app.worker.runtime import ActiveRun

_lock = threading.Lock()
_runs: dict[str, ActiveRun] = {}


def register(active: ActiveRun) -> None:
    with _lock:
        _runs[active.dispatch_id] = active


def unregister(dispatch_id: str) -> None:
    with _lock:
        _runs.pop(dispatch_id, None)


def local_runs() -> list[ActiveRun]:
    with _lock:
        return list(_runs.values())


def find_local_run(target: LiveRunTarget) -> ActiveRun | None:
    """The run executed here as exactly `target`: its thread, run and (when the target names one)
    dispatch all match; None when absent or, without a dispatch, ambiguous. A bare id is never looked
    up: a thread may be named after another thread's run or dispatch id."""
    with _lock:
        hits = [
            a
            for a in _runs.values()
            if a.thread_id == target.thread_id
            and a.run_id == target.run_id
            and (target.dispatch_id is None or a.dispatch_id == target.dispatch_id)
        ]
    return hits[0] if len(hits) == 1 else None
