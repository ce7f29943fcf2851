"""The mailbox store on PostgreSQL: the reference's `MailboxStore`, one short transaction per operation.

Every write after a claim is fenced on `(dispatch_id, claim_token, status='claimed')` and the thread's
dispatch epoch; a stale epoch supersedes the row in the same transaction and raises `VersionConflict`.
`now` (Unix ms) is a parameter everywhere so tests control time. Every dispatch status change in the
project is made by a statement of this package, declared as a `Transition` (transitions.py).

This module is the surface the services and the worker call (`store.claim(...)`); each operation lives,
with the statement it runs written out beside it, in the module named for what it does:

    queue.py       enqueue, cancel, interrupt_detailed, thread_busy, make_available, extend_queued
    claims.py      claim, claim_dispatch, claim_next_fair, blocking_limit
    fenced.py      try_start, try_settle, nack, hand_back, extend_lease, explain_lost, supersede
    upkeep.py      reclaim_expired_leases, requeue_dead_letters, purge_terminal, purge_orphaned_epochs,
                   claimable_thread_ids and threads_coming_due (what the sweep rings)
    reads.py       load_dispatch, list_dispatches, counts
    pauses.py      pause, resume and the pauses holding a thread (every claim checks them)
    inbox.py       a thread's debounce window (the services' inbox.py)
    conformance.py the reference's surface the system does not call (tests and benchmarks use it)

Beside them: steps.py (the durable step journal of a run), ports.py (the run store the mailbox drives).
"""

from mailbox_app.store.claims import (
    blocking_limit,
    claim,
    claim_dispatch,
    claim_next_fair,
    thread_owner_key,
)
from mailbox_app.store.fenced import (
    LostFence,
    Settle,
    explain_lost,
    extend_lease,
    extend_leases,
    hand_back,
    nack,
    supersede,
    try_settle,
    try_start,
)
from mailbox_app.store.pauses import pauses_holding
from mailbox_app.store.queue import (
    cancel,
    enqueue,
    extend_queued,
    interrupt_detailed,
    make_available,
    thread_busy,
)
from mailbox_app.store.reads import (
    count_by_status,
    count_thread_dispatches,
    list_dispatches,
    load_dispatch,
    queued_thread_ids,
)
from mailbox_app.store.transitions import (
    ACKING,
    CANCELLING,
    CLAIMING,
    DEAD_LETTERING,
    HANDING_BACK,
    INTERRUPTING,
    NACKING,
    RECLAIMING,
    REQUEUEING_DEAD_LETTER,
    SETTLING,
    SUPERSEDING,
    SUPERSEDING_CLAIMED,
    SUPERSEDING_STALE_QUEUED,
    TRANSITIONS,
)
from mailbox_app.store.upkeep import (
    claimable_thread_ids,
    lock_dead_letters,
    purge_orphaned_epochs,
    purge_terminal,
    reclaim_expired_leases,
    requeue_dead_letters,
    threads_coming_due,
)

__all__ = [
    "ACKING",
    "CANCELLING",
    "CLAIMING",
    "DEAD_LETTERING",
    "HANDING_BACK",
    "INTERRUPTING",
    "NACKING",
    "RECLAIMING",
    "REQUEUEING_DEAD_LETTER",
    "SETTLING",
    "SUPERSEDING",
    "SUPERSEDING_CLAIMED",
    "SUPERSEDING_STALE_QUEUED",
    "TRANSITIONS",
    "LostFence",
    "Settle",
    "blocking_limit",
    "cancel",
    "claim",
    "claim_dispatch",
    "claim_next_fair",
    "claimable_thread_ids",
    "count_by_status",
    "count_thread_dispatches",
    "enqueue",
    "explain_lost",
    "extend_lease",
    "extend_leases",
    "extend_queued",
    "hand_back",
    "interrupt_detailed",
    "list_dispatches",
    "load_dispatch",
    "lock_dead_letters",
    "make_available",
    "nack",
    "pauses_holding",
    "purge_orphaned_epochs",
    "purge_terminal",
    "queued_thread_ids",
    "reclaim_expired_leases",
    "requeue_dead_letters",
    "supersede",
    "thread_busy",
    "thread_owner_key",
    "threads_coming_due",
    "try_settle",
    "try_start",
]
