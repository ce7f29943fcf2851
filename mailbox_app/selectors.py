"""Reads shared by the admin, the API and operator commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Min

from mailbox_app.ids import now_ms
from mailbox_app.models import Dispatch
from mailbox_app.states import DispatchStatus


@dataclass(frozen=True)
class MailboxOverview:
    counts: dict[str, int]
    oldest_queued_age_ms: int | None
    claims: list[dict[str, Any]] = field(default_factory=list)


def mailbox_overview(*, now: int | None = None, claim_limit: int = 100) -> MailboxOverview:
    stamp = now_ms() if now is None else now
    counts = {s.value: 0 for s in DispatchStatus}
    for row in Dispatch.objects.values("status").annotate(n=Min("status")).values_list("status"):
        counts[row[0]] = Dispatch.objects.filter(status=row[0]).count()
    oldest = Dispatch.objects.queued().aggregate(oldest=Min("created_at"))["oldest"]
    claims = [
        {
            "thread_id": d.thread_id,
            "dispatch_id": d.dispatch_id,
            "run_id": d.run_id,
            "claimed_by": d.claimed_by,
            "claimed_since_ms": stamp - d.updated_at,
            "lease_left_ms": (d.lease_until or 0) - stamp,
        }
        for d in Dispatch.objects.claimed().order_by("lease_until")[:claim_limit]
    ]
    return MailboxOverview(
        counts=counts, oldest_queued_age_ms=None if oldest is None else stamp - oldest, claims=claims
    )
