"""The thread/run store on PostgreSQL (the reference's `ThreadRunStore`): the module the mailbox drives
through its `RunStore` port (`AWAKEN_RUN_STORE`, default this package; mailbox_app/store/ports.py checks
that it provides every operation). Each operation lives beside its statements in the module named for
what it does:

    threads.py         thread reads, the row lock, and the lifecycle (create, update, delete, search, TTL)
    messages.py        the append-only message log
    runs.py            run reads, create_run, checkpoint
    attempts.py        the run side of an attempt: prepare (submit), start, finish, cancel of a waiting run
    mailbox_tables.py  every statement that names a mailbox table: terminalize_run, the reconcile's
                       candidates, reopen_run, a thread delete's dispatch rows
    endings.py         ending a run with the messages that close what it left open
    records.py         rows to records
"""

from runs_app.store.attempts import cancel_waiting_run, finish_run, prepare_run, start_run
from runs_app.store.mailbox_tables import reopen_run, terminal_dispatches_with_open_runs, terminalize_run
from runs_app.store.messages import (
    append_messages,
    list_message_records,
    load_message_record,
    load_message_records,
    load_message_records_range,
    load_messages,
)
from runs_app.store.runs import (
    checkpoint,
    create_run,
    latest_run,
    list_runs,
    load_run,
    load_runs,
    overdue_runs,
    require_run,
)
from runs_app.store.threads import (
    ThreadView,
    ensure_thread,
    load_thread,
    load_thread_and_latest_run,
    load_thread_view,
    load_threads,
)

__all__ = [
    "ThreadView",
    "append_messages",
    "cancel_waiting_run",
    "checkpoint",
    "create_run",
    "ensure_thread",
    "finish_run",
    "latest_run",
    "list_message_records",
    "list_runs",
    "load_message_record",
    "load_message_records",
    "load_message_records_range",
    "load_messages",
    "load_run",
    "load_runs",
    "load_thread",
    "load_thread_and_latest_run",
    "load_thread_view",
    "load_threads",
    "overdue_runs",
    "prepare_run",
    "reopen_run",
    "require_run",
    "start_run",
    "terminal_dispatches_with_open_runs",
    "terminalize_run",
]
