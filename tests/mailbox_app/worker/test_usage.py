"""Usage and token budgets on a real worker: what the echo agent reports (words as tokens) lands on the
run per attempt and summed, through the fused finish and through the port path (a concurrency limit
takes it), is counted in /metrics by agent and owner, and settles the claim's token-budget reservation;
a run of an owner whose window is spent waits — queued, no attempt counted, passed over by other
claims — and starts once its budget allows (the admin's row, read by the next claim)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from mailbox_app import store
from mailbox_app.contract.budgets import TokenBudgets, WindowBudget
from mailbox_app.contract.config import ClaimPolicy
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import TokenBudget, TokenCharge
from mailbox_app.services import mailbox, maintenance, selectors
from runs_app import store as run_store
from tests.support.api import new_user
from tests.support.waiting import wait_until


def _request(thread_id: str, text: str) -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], agent_id="echo")


def _done(run_id: str, timeout: float = 20.0) -> Any:
    return wait_until(
        lambda: (r := run_store.load_run(run_id=run_id)) is not None and r.status is RunStatus.DONE and r,
        timeout=timeout,
        what=f"run {run_id} done",
    )


def _tokens(kind: str, owner: str) -> float:
    """`awaken_tokens_total{agent="echo", owner, kind}` as GET /metrics serves it (loopback may scrape)."""
    response = Client().get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            if sample.name == "awaken_tokens_total" and sample.labels == {
                "agent": "echo",
                "owner": owner,
                "kind": kind,
            }:
                return float(sample.value)
    return 0.0


@pytest.mark.parametrize("path", ["fused", "port"])
def test_the_echo_agents_usage_lands_on_the_run_and_in_the_metrics(
    mailbox_worker: Any, engine_settings: Any, path: str
) -> None:
    if path == "port":  # a concurrency limit: the finish takes the port path (runs_tables.fused())
        engine_settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(max_active_runs=50)
    owner = str(new_user(f"usage-{path}").pk)
    before = (_tokens("input", owner), _tokens("output", owner))
    submitted = mailbox.submit_background(_request(f"usage-{path}", "one two three"), owner_id=int(owner))
    run = _done(submitted.run_id)
    assert run.final_output == "echo: one two three"
    # three words in, four out ("echo:" counts)
    assert (run.input_tokens, run.output_tokens, run.cost) == (3, 4, None)
    [attempt] = run.usage_attempts
    assert (attempt.dispatch_id, attempt.attempt, attempt.ended) == (submitted.dispatch_id, 1, "finished")
    assert (attempt.input_tokens, attempt.output_tokens) == (3, 4)
    # counted once, after the finish committed, under the run's agent and owner
    wait_until(lambda: _tokens("input", owner) - before[0] == 3, what="input tokens counted")
    assert _tokens("output", owner) - before[1] == 4
    # a second turn of the thread is a run of its own: its usage is its own
    again = mailbox.submit_background(_request(f"usage-{path}", "four"), owner_id=int(owner))
    second = _done(again.run_id)
    assert (second.input_tokens, second.output_tokens) == (1, 2)


@pytest.mark.parametrize("path", ["fused", "port"])
def test_the_finish_settles_the_claims_reservation_with_what_the_attempt_used(
    mailbox_worker: Any, engine_settings: Any, path: str
) -> None:
    if path == "port":
        engine_settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(max_active_runs=50)
    engine_settings.AWAKEN_TOKEN_BUDGETS = TokenBudgets(
        enabled=True, owner=WindowBudget(tokens=10_000, window_s=3600), reserve_tokens=500
    )
    owner = new_user(f"settle-{path}").pk
    submitted = mailbox.submit_background(_request(f"settle-{path}", "one two three"), owner_id=owner)
    _done(submitted.run_id)
    charge = wait_until(
        lambda: TokenCharge.objects.filter(
            dispatch_id=submitted.dispatch_id, settled_at__isnull=False
        ).first(),
        what="the charge settled",
    )
    assert (charge.scope, charge.key, charge.reserved, charge.tokens) == ("owner", str(owner), 500, 3 + 4)


def test_a_spent_owner_waits_without_an_attempt_and_starts_once_the_admin_raises_its_budget(
    mailbox_worker: Any, engine_settings: Any
) -> None:
    """(The window's reset is the store tests', with a controlled clock: here the window is an hour.)"""
    engine_settings.AWAKEN_TOKEN_BUDGETS = TokenBudgets(
        enabled=True, owner=WindowBudget(tokens=5, window_s=3600), reserve_tokens=5
    )
    owner, other = new_user("spent").pk, new_user("not-spent").pk
    first = mailbox.submit_background(_request("spent-0", "one two three"), owner_id=owner)
    second = mailbox.submit_background(_request("spent-1", "four"), owner_id=owner)
    assert first.status is mailbox.SubmitStatus.RUNNING and second.status is mailbox.SubmitStatus.QUEUED
    _done(first.run_id)  # it used 7 tokens: the owner's window (5) is spent
    # another owner's run goes through; its finish's fair claim leaves the spent owner's run alone
    _done(mailbox.submit_background(_request("other-0", "hi"), owner_id=other).run_id)
    maintenance.sweep()  # and so does the sweep's ring
    held = store.load_dispatch(second.dispatch_id)
    assert held is not None and held.status is DispatchStatus.QUEUED  # waits: not failed
    assert (held.attempt_count, held.last_error) == (0, None)  # and no attempt counted
    report = selectors.thread_block_report("spent-1")
    assert any(f"token budget of owner {owner}: resets in" in r for r in report.reasons), report.reasons
    assert run_store.load_run(run_id=second.run_id).status is RunStatus.CREATED  # type: ignore[union-attr]

    TokenBudget.objects.create(scope="owner", key=str(owner), tokens=100, window_s=3600)
    maintenance.sweep()  # the next claim reads the row: the sweep's ring starts it
    run = _done(second.run_id)
    assert run.final_output == "echo: four"
    settled = store.load_dispatch(second.dispatch_id)
    assert settled is not None and settled.status is DispatchStatus.ACKED and settled.attempt_count == 0
