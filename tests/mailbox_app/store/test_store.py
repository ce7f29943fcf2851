"""A first end-to-end pass through the store: enqueue, claim, start, result, ack."""

from __future__ import annotations

import pytest

from mailbox_app import store
from mailbox_app.contract.mailbox import DispatchStatus, RunDispatchResult
from mailbox_app.store import conformance
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db


def test_claim_start_result_ack_cycle() -> None:
    store.enqueue(make_dispatch("d1", "t1"))
    [claimed] = store.claim("t1", "c1", 30_000, 1000)
    assert claimed.status is DispatchStatus.CLAIMED and claimed.lease_until == 31_000
    token = claimed.claim_token
    assert token
    conformance.record_dispatch_start("d1", token, "inst-1", 1001)
    conformance.record_run_result(
        "d1", token, RunDispatchResult(run_id="run-d1", dispatch_instance_id="inst-1", status="done"), 1002
    )
    acked = conformance.ack("d1", token, 1003)
    assert acked.status is DispatchStatus.ACKED
    assert acked.claim_token is None and acked.run_status == "done" and acked.completed_at == 1003
