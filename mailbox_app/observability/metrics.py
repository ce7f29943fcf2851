"""Prometheus metrics of the mailbox: the reference's set (`crate::metrics::` in mailbox.rs), named the
same, and the small `record_*` helpers the mailbox calls.

Multiprocess mode: with `PROMETHEUS_MULTIPROC_DIR` set before this module is first imported (make run,
the Procfile and the test harness set it), every process — gunicorn workers, Celery's pool children —
writes its values to memory-mapped files there, and `/metrics` (`mailbox_app/observability/view.py`) merges
every process's files. Without it, values live in this process only.

Cheap by construction: every labelled child is bound once here (`.labels()` never runs per call), and
a timed operation costs two `perf_counter` calls and two mmap writes.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, MailboxInterrupt
from mailbox_app.contract.storage import NotFound, VersionConflict

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

# Store round trips are milliseconds; dispatch latencies and runtimes range up to minutes.
OPERATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

OPERATION_TOTAL = Counter("mailbox_operation", "Mailbox store operations by result.", ["operation", "result"])
OPERATION_DURATION = Histogram(
    "mailbox_operation_duration_seconds",
    "Duration of mailbox store operations.",
    ["operation"],
    buckets=OPERATION_BUCKETS,
)
# Refreshed by the sweep (any worker process): the most recent refresh is the answer.
DISPATCH_DEPTH = Gauge(
    "mailbox_dispatch_depth", "Dispatches by status.", ["status"], multiprocess_mode="mostrecent"
)
QUEUE_DEPTH = Gauge("mailbox_queue_depth", "Queued dispatches.", multiprocess_mode="mostrecent")
DISPATCH_ENQUEUE_TO_START = Histogram(
    "mailbox_dispatch_enqueue_to_start_seconds",
    "From a dispatch's enqueue to its attempt's start.",
    buckets=LATENCY_BUCKETS,
)
DISPATCH_ELIGIBLE_TO_START = Histogram(
    "mailbox_dispatch_eligible_to_start_seconds",
    "From a dispatch's available_at to its attempt's start.",
    buckets=LATENCY_BUCKETS,
)
DISPATCH_CLAIM_TO_START = Histogram(
    "mailbox_dispatch_claim_to_start_seconds",
    "From a dispatch's claim to its attempt's start.",
    buckets=LATENCY_BUCKETS,
)
DISPATCH_RUNTIME = Histogram(
    "mailbox_dispatch_runtime_seconds",
    "From an attempt's start to its end, by outcome.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
DISPATCH_ENQUEUE_TO_COMPLETE = Histogram(
    "mailbox_dispatch_enqueue_to_complete_seconds",
    "From a dispatch's enqueue to its end, by outcome.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
RUN_COMPLETION = Histogram(
    "run_completion_seconds", "Run activations by outcome and duration.", ["outcome"], buckets=LATENCY_BUCKETS
)
# Summed over live processes; the files of a dead process are dropped at the next scrape.
ACTIVE_RUNS = Gauge("active_runs", "Runs executing now.", multiprocess_mode="livesum")
SIGNAL_ACK = Counter("mailbox_dispatch_signal_ack", "Doorbells acknowledged.")
SIGNAL_NACK = Counter("mailbox_dispatch_signal_nack", "Doorbells handed back for a retry.", ["delayed"])
SIGNAL_REDELIVERY = Counter("mailbox_dispatch_signal_redelivery", "Doorbells delivered more than once.")

# What agents used (docs/replay-and-budgets.md): each attempt's reported usage, counted at its finish.
# One series per agent and owner (the owner's key: the user's id), so a team can bill per customer.
TOKENS = Counter("awaken_tokens", "Tokens agents used, by agent, owner and kind (input / output).",
                 ["agent", "owner", "kind"])  # fmt: skip
COST = Counter(
    "awaken_cost", "Cost agents reported (the agent's unit), by agent and owner.", ["agent", "owner"]
)

# Webhook deliveries (mailbox_app/webhooks/delivery.py): one count per attempt that claimed its outbox row,
# by how it ended, once that outcome was written; and how long its request took (DNS, connect, TLS, send,
# the answer), which AWAKEN_WEBHOOK_TIMEOUT_MS bounds.
WEBHOOK_ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WEBHOOK_ATTEMPTS = Counter("mailbox_webhook_attempts", "Webhook delivery attempts by outcome.", ["outcome"])
WEBHOOK_ATTEMPT_DURATION = Histogram(
    "mailbox_webhook_attempt_duration_seconds",
    "One webhook delivery attempt's request, by outcome.",
    ["outcome"],
    buckets=WEBHOOK_ATTEMPT_BUCKETS,
)

SIGNAL_NACK_DELAYED = SIGNAL_NACK.labels(delayed="true")
SIGNAL_NACK_NOW = SIGNAL_NACK.labels(delayed="false")
OUTCOMES = ("completed", "transient_error", "permanent_error", "cancelled", "superseded", "dead_letter")
DEPTH_STATUSES = tuple(DispatchStatus)


class _Outcome:
    """The completion histograms of one outcome, bound once."""

    __slots__ = ("enqueue_to_complete", "run_completion", "runtime")

    def __init__(self, outcome: str) -> None:
        self.runtime = DISPATCH_RUNTIME.labels(outcome=outcome)
        self.enqueue_to_complete = DISPATCH_ENQUEUE_TO_COMPLETE.labels(outcome=outcome)
        self.run_completion = RUN_COMPLETION.labels(outcome=outcome)


_OUTCOMES = {name: _Outcome(name) for name in OUTCOMES}
# delivered (2xx), failed (retried later), gave_up (the last attempt failed: the row is failed), refused
# (the target resolved to an address the policy forbids: failed at once), lost (the outcome's write found
# the row no longer this attempt's: its lease passed and another attempt took it).
WEBHOOK_OUTCOMES = ("delivered", "failed", "gave_up", "refused", "lost")
_WEBHOOK_OUTCOMES = {
    name: (WEBHOOK_ATTEMPTS.labels(outcome=name), WEBHOOK_ATTEMPT_DURATION.labels(outcome=name))
    for name in WEBHOOK_OUTCOMES
}
_DEPTHS = {status: DISPATCH_DEPTH.labels(status=status.value) for status in DEPTH_STATUSES}


class Operation:
    """`mailbox_operation_total{operation,result}` and `…_duration_seconds{operation}` of one operation."""

    __slots__ = ("duration", "name", "totals")

    RESULTS = ("ok", "empty", "lost", "error")

    def __init__(self, name: str) -> None:
        self.name = name
        self.duration = OPERATION_DURATION.labels(operation=name)
        self.totals = {
            result: OPERATION_TOTAL.labels(operation=name, result=result) for result in self.RESULTS
        }

    def record(self, result: str, seconds: float) -> None:
        self.totals[result].inc()
        self.duration.observe(seconds)

    def inc(self, amount: int, result: str = "ok") -> None:
        """Count without a duration (the reference's `inc_mailbox_operation_by`)."""
        if amount > 0:
            self.totals[result].inc(amount)

    def timed(self) -> _Timer:
        return _Timer(self)


class _Timer:
    """`with op.timed() as t: ...; t.result = "empty"` — an exception records `error`."""

    __slots__ = ("op", "result", "start")

    def __init__(self, op: Operation) -> None:
        self.op, self.result, self.start = op, "ok", 0.0

    def __enter__(self) -> _Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.op.record(self.result if kind is None else _error_label(exc), time.perf_counter() - self.start)


def _error_label(exc: BaseException | None) -> str:
    return "lost" if isinstance(exc, (VersionConflict, NotFound)) else "error"


OPERATION_NAMES = (
    "enqueue", "claim", "claim_dispatch", "ack", "nack", "dead_letter", "cancel", "interrupt", "supersede",
    "reclaim", "reclaim_dispatch", "extend_lease", "mark_run_dead_letter", "mark_run_cancelled",
    "mark_run_superseded",
)  # fmt: skip
OPERATIONS = {name: Operation(name) for name in OPERATION_NAMES}
ENQUEUE, CLAIM, CLAIM_DISPATCH = OPERATIONS["enqueue"], OPERATIONS["claim"], OPERATIONS["claim_dispatch"]
ACK, NACK, DEAD_LETTER = OPERATIONS["ack"], OPERATIONS["nack"], OPERATIONS["dead_letter"]
CANCEL, INTERRUPT, SUPERSEDE = OPERATIONS["cancel"], OPERATIONS["interrupt"], OPERATIONS["supersede"]
RECLAIM, RECLAIM_DISPATCH = OPERATIONS["reclaim"], OPERATIONS["reclaim_dispatch"]
EXTEND_LEASE = OPERATIONS["extend_lease"]
_MARK_RUN = {
    DispatchStatus.DEAD_LETTER: (OPERATIONS["mark_run_dead_letter"], "dead_letter"),
    DispatchStatus.CANCELLED: (OPERATIONS["mark_run_cancelled"], "cancelled"),
    DispatchStatus.SUPERSEDED: (OPERATIONS["mark_run_superseded"], "superseded"),
}


# --- result labels of store answers ---------------------------------------------------------------


def ok(_: object) -> str:
    return "ok"


def found(answer: object) -> str:
    """A claim / cancel / supersede: `empty` when nothing matched."""
    return "ok" if answer else "empty"


def fenced(answer: object) -> str:
    """A fenced write: `lost` when the claim was no longer this attempt's."""
    return "ok" if answer else "lost"


def interrupted(answer: MailboxInterrupt) -> str:
    SUPERSEDE.inc(answer.superseded_count)
    return "ok"


def reclaimed(answer: list[DispatchRecord]) -> str:
    RECLAIM_DISPATCH.inc(len(answer))
    return "ok"


def timed(
    op: Operation | Callable[..., Operation], result: Callable[[Any], str] = ok
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a store operation: its count by `result(answer)` (an exception: `error`, or `lost` for a
    lost fence) and its duration. `op` may pick the operation from the call's arguments."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            operation = op if isinstance(op, Operation) else op(*args, **kwargs)
            start = time.perf_counter()
            try:
                answer = function(*args, **kwargs)
            except BaseException as exc:
                operation.record(_error_label(exc), time.perf_counter() - start)
                raise
            operation.record(result(answer), time.perf_counter() - start)
            return answer

        return wrapper

    return decorate


def settle_operation(*args: Any, **kwargs: Any) -> Operation:
    """`store.try_settle(dispatch_id, claim_token, outcome, ...)`: ack, nack or dead_letter."""
    outcome = kwargs["outcome"] if "outcome" in kwargs else args[2]
    return OPERATIONS[str(outcome)]


# --- dispatch latency and completion (record_mailbox_dispatch_*_metrics) ---------------------------


def _seconds(since_ms: int, until_ms: int) -> float:
    return max(until_ms - since_ms, 0) / 1000


def claimed_at_ms(dispatch: DispatchRecord) -> int:
    """When the dispatch was claimed: its claim token is a UUIDv7 minted by the claim (48-bit Unix ms)."""
    try:
        return uuid.UUID(dispatch.claim_token or "").int >> 80
    except ValueError:
        return dispatch.updated_at


def record_dispatch_start(dispatch: DispatchRecord, start_ms: int) -> None:
    """An attempt started (the reference's `record_mailbox_dispatch_start_metrics`)."""
    DISPATCH_ENQUEUE_TO_START.observe(_seconds(dispatch.created_at, start_ms))
    DISPATCH_ELIGIBLE_TO_START.observe(_seconds(dispatch.available_at, start_ms))
    DISPATCH_CLAIM_TO_START.observe(_seconds(claimed_at_ms(dispatch), start_ms))


def record_dispatch_completion(dispatch: DispatchRecord, start_ms: int, end_ms: int, outcome: str) -> None:
    """An attempt ended (`record_mailbox_dispatch_completion_metrics`): completed / transient_error /
    permanent_error; a run ended by someone else: cancelled / superseded / dead_letter."""
    bound = _OUTCOMES[outcome]
    runtime = _seconds(start_ms, end_ms)
    bound.runtime.observe(runtime)
    bound.enqueue_to_complete.observe(_seconds(dispatch.created_at, end_ms))
    bound.run_completion.observe(runtime)


def marks_run(function: Callable[P, R]) -> Callable[P, R]:
    """Decorate `terminalize_run_for_dispatch(dispatch, ...)`: `mark_run_dead_letter` (or `_cancelled`,
    `_superseded`) counted and timed, and the terminal completion recorded when a run was ended."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        dispatch = args[0] if args else kwargs.get("dispatch")
        bound = _MARK_RUN.get(dispatch.status) if isinstance(dispatch, DispatchRecord) else None
        if bound is None:
            return function(*args, **kwargs)
        op, outcome = bound
        with op.timed():
            ended = function(*args, **kwargs)
        if ended is not None and isinstance(dispatch, DispatchRecord):
            # `record_mailbox_dispatch_terminal_metrics`: ended where it stood, no runtime of its own
            end_ms = dispatch.completed_at or now_ms()
            record_dispatch_completion(dispatch, end_ms, end_ms, outcome)
        return ended

    return wrapper


_USAGE_CHILDREN: dict[tuple[str, str], tuple[Any, Any, Any]] = {}


def _usage_children(agent: str, owner: str) -> tuple[Any, Any, Any]:
    """The (input, output, cost) children of one agent and owner, bound on first use and kept."""
    bound = _USAGE_CHILDREN.get((agent, owner))
    if bound is None:
        bound = (
            TOKENS.labels(agent=agent, owner=owner, kind="input"),
            TOKENS.labels(agent=agent, owner=owner, kind="output"),
            COST.labels(agent=agent, owner=owner),
        )
        _USAGE_CHILDREN[(agent, owner)] = bound
    return bound


def record_usage(agent: str, owner: str, input_tokens: int, output_tokens: int, cost: float | None) -> None:
    """An attempt's usage, counted once at its finish (after it committed)."""
    inputs, outputs, costs = _usage_children(agent, owner)
    if input_tokens > 0:
        inputs.inc(input_tokens)
    if output_tokens > 0:
        outputs.inc(output_tokens)
    if cost:
        costs.inc(cost)


def record_webhook_attempt(outcome: str, seconds: float) -> None:
    """A webhook delivery attempt ended (`WEBHOOK_OUTCOMES`), its request having taken `seconds`;
    called once its outcome was written, so a worker that dies first counts nothing (the re-drive's
    attempt is counted instead)."""
    attempts, duration = _WEBHOOK_OUTCOMES[outcome]
    attempts.inc()
    duration.observe(seconds)


# --- depth (refreshed by the sweep), signals -------------------------------------------------------


def refresh_dispatch_depth(count_by_status: Callable[[], Mapping[DispatchStatus, int]]) -> None:
    """`refresh_dispatch_depth_metrics`: one grouped count; a failure leaves the last values."""
    try:
        counts = count_by_status()
    except Exception:
        log.debug("mailbox dispatch depth metric unavailable", exc_info=True)
        return
    for status, child in _DEPTHS.items():
        child.set(counts.get(status, 0))
    QUEUE_DEPTH.set(counts.get(DispatchStatus.QUEUED, 0))


class SignalDecisionLike(Protocol):
    """`signals.SignalDecision` (not imported: signals imports the store, which imports this module)."""

    @property
    def action(self) -> str: ...
    @property
    def retry_after_ms(self) -> int: ...


def record_signal(
    decision: SignalDecisionLike, deliveries: int | None, delivery_info: Mapping[str, Any] | None
) -> None:
    """A doorbell handled: acked, or handed back (nack, a Celery retry) with or without a delay; one
    delivered more than once (a retry, or a redelivery after a worker was lost) is counted too."""
    if (deliveries or 0) > 1 or (delivery_info or {}).get("redelivered"):
        SIGNAL_REDELIVERY.inc()
    if decision.action == "ack":
        SIGNAL_ACK.inc()
    elif decision.retry_after_ms > 0:
        SIGNAL_NACK_DELAYED.inc()
    else:
        SIGNAL_NACK_NOW.inc()
