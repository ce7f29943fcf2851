"""The status change each store operation makes, declared against the dispatch transition table
(`ALLOWED_TRANSITIONS`, mailbox_app/contract/mailbox.py) and checked when this module is imported: no
operation can be written that makes a move the table does not allow. Every dispatch status change in
the project is made by a statement of mailbox_app/store/ (tests/mailbox_app/store/test_transitions.py)."""

from __future__ import annotations

from mailbox_app.contract.mailbox import DispatchStatus, Transition

_Q, _C, _A = DispatchStatus.QUEUED, DispatchStatus.CLAIMED, DispatchStatus.ACKED
_X, _S, _D = DispatchStatus.CANCELLED, DispatchStatus.SUPERSEDED, DispatchStatus.DEAD_LETTER

CLAIMING = Transition.of("claim / claim_next_fair / claim_dispatch (T2, T3)", [_Q], [_C])
SUPERSEDING_STALE_QUEUED = Transition.of("claim of a thread with stale queued rows (T5)", [_Q], [_S])
INTERRUPTING = Transition.of("interrupt: the thread's queued rows (T4)", [_Q], [_S])
CANCELLING = Transition.of("cancel (T6)", [_Q], [_X])
ACKING = Transition.of("ack (T7)", [_C], [_A])
NACKING = Transition.of("nack (T8, T9)", [_C], [_Q, _D])
DEAD_LETTERING = Transition.of("dead_letter (T9)", [_C], [_D])
SETTLING = Transition.of("try_settle: ack, nack or dead letter", [_C], [_A, _Q, _D])
RECLAIMING = Transition.of("reclaim_expired_leases (T10)", [_C], [_Q, _D])
HANDING_BACK = Transition.of("hand_back: a worker shutting down gives its claim back", [_C], [_Q])
SUPERSEDING_CLAIMED = Transition.of("a fenced write or reclaim of a stale claim (T11-T13)", [_C], [_S])
# `supersede` serves both: its statement has no status condition, so it checks the locked row's status
SUPERSEDING = Transition.of("supersede", [_Q, _C], [_S])
REQUEUEING_DEAD_LETTER = Transition.of("requeue_dead_letters (operator)", [_D], [_Q])

TRANSITIONS: tuple[Transition, ...] = (
    CLAIMING,
    SUPERSEDING_STALE_QUEUED,
    INTERRUPTING,
    CANCELLING,
    ACKING,
    NACKING,
    DEAD_LETTERING,
    SETTLING,
    RECLAIMING,
    HANDING_BACK,
    SUPERSEDING_CLAIMED,
    SUPERSEDING,
    REQUEUEING_DEAD_LETTER,
)
