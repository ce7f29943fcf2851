"""The run and thread a log record belongs to, for whoever formats the logs.

The worker wraps an attempt in `with bind_run(run_id, thread_id):`; every record logged inside it (in
that thread or task, a contextvars context) can then carry both ids. The host project's logging filter
reads `current()` (awaken_project/logconfig.py). No logging configuration and no dependency here: the
apps only say which run is under way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple


class RunContext(NamedTuple):
    run_id: str | None
    thread_id: str | None


NO_RUN = RunContext(None, None)
_current: ContextVar[RunContext] = ContextVar("awaken_log_run", default=NO_RUN)


@contextmanager
def bind_run(run_id: str | None, thread_id: str | None = None) -> Iterator[None]:
    """Records logged inside the block name this run and thread; the previous binding comes back after."""
    token = _current.set(RunContext(run_id, thread_id))
    try:
        yield
    finally:
        _current.reset(token)


def current() -> RunContext:
    """The run and thread bound in this context (both None outside any `bind_run`)."""
    return _current.get()
