"""The runs this process executes, for local cancel / steer / decide (its consumer id: contract.ids)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

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


def find_local_run(identifier: str) -> ActiveRun | None:
    """By dispatch id, run id or thread id; None when ambiguous or absent."""
    with _lock:
        hits = [a for a in _runs.values() if identifier in {a.dispatch_id, a.run_id, a.thread_id}]
    return hits[0] if len(hits) == 1 else None
