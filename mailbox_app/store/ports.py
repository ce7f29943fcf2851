"""The narrow interface through which the mailbox reaches the thread/run store (runs_app.store by default).

The mailbox never imports runs_app; `AWAKEN_RUN_STORE` names the module that implements `RunStore`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import cache
from importlib import import_module
from typing import Any, Protocol, cast

from django.core.checks import CheckMessage, Error

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.history import Closer
from mailbox_app.contract.lifecycle import RunReopen, RunStatus
from mailbox_app.contract.message import ChatMessage, MessageRecord
from mailbox_app.contract.storage import RunPage, RunRecord, TerminationReason, ThreadRecord


class RunStore(Protocol):
    def load_thread(self, *, thread_id: str) -> ThreadRecord | None: ...

    def load_thread_and_latest_run(
        self, *, thread_id: str
    ) -> tuple[ThreadRecord | None, RunRecord | None]: ...

    def ensure_thread(
        self, *, thread_id: str, owner_id: int | None = None, now: int | None = None
    ) -> ThreadRecord: ...

    def load_messages(self, *, thread_id: str, include_internal: bool = True) -> list[ChatMessage] | None: ...

    def append_messages(
        self, *, thread_id: str, messages: Sequence[ChatMessage], now: int | None = None
    ) -> list[MessageRecord]: ...

    def load_message_record(self, *, thread_id: str, message_id: str) -> MessageRecord | None: ...

    def load_message_records(self, *, thread_id: str, message_ids: Sequence[str]) -> list[MessageRecord]: ...

    def load_message_records_range(
        self, *, thread_id: str, from_seq: int, to_seq: int
    ) -> list[MessageRecord]: ...

    def load_run(self, *, run_id: str) -> RunRecord | None: ...

    def latest_run(self, *, thread_id: str) -> RunRecord | None: ...

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        thread_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> RunPage: ...

    def reopen_run(self, *, run_id: str, dispatch_id: str, now: int) -> RunReopen: ...

    def terminal_dispatches_with_open_runs(self, *, limit: int) -> list[str]: ...

    def overdue_runs(self, *, now: int, limit: int) -> list[RunRecord]: ...

    def checkpoint(
        self,
        *,
        thread_id: str,
        messages: Sequence[ChatMessage],
        run: RunRecord,
        now: int | None = None,
        input_trigger_ids: list[str] | None = None,
    ) -> list[MessageRecord]: ...

    # Fenced attempt writes: called inside the mailbox's transaction, right after its fenced dispatch
    # update; each is conditional on who owns the run and answers None when nothing was written.
    def start_run(
        self, *, run_id: str, thread_id: str, dispatch_id: str, session_id: str, now: int
    ) -> RunRecord | None: ...

    def finish_run(
        self, *, run: RunRecord, messages: Sequence[ChatMessage], dispatch_id: str, session_id: str, now: int
    ) -> RunRecord | None: ...

    def terminalize_run(
        self,
        *,
        run_id: str,
        thread_id: str,
        dispatch_id: str,
        session_id: str | None,
        termination: TerminationReason,
        error_payload: object,
        now: int,
        ended_at: int | None = None,
        closing: Closer | None = None,
    ) -> RunRecord | None: ...

    def prepare_run(
        self,
        *,
        run: RunRecord,
        messages: Sequence[ChatMessage],
        input_trigger_ids: list[str],
        owner_id: int | None,
        now: int,
    ) -> list[str]: ...

    def cancel_waiting_run(
        self, *, run_id: str, now: int, closing: Closer | None = None
    ) -> RunRecord | None: ...


@cache
def _load(path: str) -> RunStore:
    return cast(RunStore, import_module(path))


def run_store() -> RunStore:
    return _load(awaken_settings.RUN_STORE)


def run_store_operations() -> list[str]:
    """The operations `RunStore` declares (what a configured store module must define)."""
    declared = vars(RunStore).items()
    return sorted(name for name, value in declared if callable(value) and not name.startswith("_"))


def check_run_store(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """System check: the module `AWAKEN_RUN_STORE` names imports and defines every `RunStore` operation
    (the `cast` in `_load` is unchecked; this is where a wrong path or a missing function shows)."""
    path = awaken_settings.RUN_STORE
    try:
        module = import_module(path)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported as the check's finding
        return [Error(f"AWAKEN_RUN_STORE {path!r} does not import: {exc}", id="mailbox_app.E010")]
    missing = [name for name in run_store_operations() if not callable(getattr(module, name, None))]
    if missing:
        return [
            Error(
                f"AWAKEN_RUN_STORE {path!r} lacks RunStore operations: {', '.join(missing)}",
                id="mailbox_app.E011",
            )
        ]
    mismatched = [
        f"{name}({', '.join(absent)})"
        for name in run_store_operations()
        if (absent := _parameters_not_taken(getattr(RunStore, name), getattr(module, name)))
    ]
    if mismatched:
        return [
            Error(
                f"AWAKEN_RUN_STORE {path!r}: operations that do not take RunStore's parameters: "
                + "; ".join(mismatched),
                id="mailbox_app.E012",
            )
        ]
    return []


def _parameters_not_taken(declared: Callable[..., Any], implemented: Callable[..., Any]) -> list[str]:
    """The parameters of the protocol's operation the implementation cannot be called with (by name)."""
    try:
        taken = inspect.signature(implemented).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to compare
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in taken):
        return []
    names = {p.name for p in taken if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    wanted = [p for p in inspect.signature(declared).parameters.values() if p.name != "self"]
    return [p.name for p in wanted if p.name not in names]
