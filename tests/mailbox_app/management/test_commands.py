"""Operator commands: one service call each, a one-line summary, a meaningful exit code."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DispatchStatus
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _summary(output: str, label: str) -> object:
    line = next(line for line in output.splitlines() if line.startswith(f"{label}: "))
    return json.loads(line.split(": ", 1)[1])


def test_sweep_reclaims_an_expired_lease() -> None:
    store.enqueue(make_dispatch("d1", "t1", available_at=0, created_at=0))
    store.claim("t1", "dead-worker", 10, 1)
    assert _summary(_run("mailbox_sweep"), "sweep") == {
        "reclaimed": 1,
        "dead_lettered": 0,
        "reconciled": 0,
        "redriven": 1,
        "timed_out": 0,
        "rung_ahead": 0,
    }
    assert store.load_dispatch("d1").status is DispatchStatus.QUEUED


def test_gc_purges_old_terminal_rows(settings: object) -> None:
    store.enqueue(make_dispatch("d1", "t1", available_at=0, created_at=0))
    store.cancel("d1", 1)
    summary = _summary(_run("mailbox_gc"), "gc")
    assert isinstance(summary, dict)
    assert (summary["dispatches"], summary["epochs"]) == (1, 1)  # t1's epoch row is orphaned with d1 gone
    assert store.load_dispatch("d1") is None


def test_requeue_dead_letter_and_errors() -> None:
    store.enqueue(make_dispatch("d1", "t1", available_at=0, created_at=0, max_attempts=1))
    [claimed] = store.claim("t1", "c", 30_000, 1)
    store.nack("d1", claimed.claim_token or "", 2, "boom", 2)
    assert store.load_dispatch("d1").status is DispatchStatus.DEAD_LETTER
    assert _summary(_run("mailbox_requeue", "d1"), "requeue") == {"requeued": 1}
    again = store.load_dispatch("d1")
    assert (
        again.status is DispatchStatus.QUEUED and again.attempt_count == 0 and again.available_at <= now_ms()
    )
    with pytest.raises(CommandError, match="not dead-lettered"):
        _run("mailbox_requeue", "d1")
    with pytest.raises(CommandError, match="--all-dead-letter"):
        _run("mailbox_requeue")


def test_status_reports_counts_and_claims() -> None:
    store.enqueue(make_dispatch("d1", "t1", available_at=0, created_at=0))
    store.enqueue(make_dispatch("d2", "t1", available_at=0, created_at=1))
    store.claim("t1", "worker-9", 600_000, now_ms())
    output = _run("mailbox_status")
    counts = _summary(output, "counts")
    assert isinstance(counts, dict) and counts["queued"] == 1 and counts["claimed"] == 1
    claim = _summary(output, "claim")
    assert isinstance(claim, dict) and claim["claimed_by"] == "worker-9" and claim["dispatch_id"] == "d1"
    assert claim["lease_left_ms"] > 0


def test_reconcile_and_recover_run() -> None:
    assert _summary(_run("mailbox_reconcile"), "reconcile") == {"runs_terminalized": 0}
    recovered = _summary(_run("mailbox_recover"), "recover")
    assert isinstance(recovered, dict) and set(recovered) == {"reclaimed", "reconciled", "redriven", "woken"}


def test_create_api_user_prints_a_working_token() -> None:
    token = _run("create_api_user", "dora", "--password", "pw").strip()
    assert Token.objects.get(key=token).user.username == "dora"
    assert _run("create_api_user", "dora").strip() == token  # idempotent


def test_ensure_dev_user_prints_a_curl_line() -> None:
    output = _run("ensure_dev_user", "--port", "9999")
    assert "curl -sN" in output and "http://127.0.0.1:9999/api/v1/runs" in output
