"""Dispatch rows for store-level tests, and the fast mailbox config the engine tests run with."""

from __future__ import annotations

from mailbox_app.contract.config import MailboxConfig
from mailbox_app.contract.mailbox import DispatchRecord

FAST = MailboxConfig(
    lease_ms=3_000,
    suspended_lease_ms=10_000,
    lease_renewal_interval_ms=200,
    default_retry_delay_ms=50,
    max_retry_delay_ms=200,
)


def make_dispatch(
    dispatch_id: str,
    thread_id: str,
    run_id: str | None = None,
    *,
    priority: int = 128,
    available_at: int = 1000,
    created_at: int = 1000,
    max_attempts: int = 5,
    dedupe_key: str | None = None,
) -> DispatchRecord:
    """A queued dispatch like the conformance suite's `make_dispatch`."""
    return DispatchRecord(
        dispatch_id=dispatch_id,
        thread_id=thread_id,
        run_id=run_id or f"run-{dispatch_id}",
        priority=priority,
        available_at=available_at,
        max_attempts=max_attempts,
        dedupe_key=dedupe_key,
        created_at=created_at,
        updated_at=created_at,
    )
