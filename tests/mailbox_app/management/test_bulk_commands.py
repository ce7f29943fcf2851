"""The commands that move many rows: `--dry-run` changes nothing and says what would change, `--limit`
is respected, the work goes in batches of `--batch-size` (each its own transaction: a batch is visible to
another connection before the next one starts) with a progress line each, and bad option values are
refused naming the option."""

from __future__ import annotations

import json
import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command, load_command_class
from django.db import connection

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.models import Dispatch
from mailbox_app.services.operator import requeue_in_batches
from runs_app import store as run_store
from tests.support.dispatches import make_dispatch


def _run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().splitlines()


def _summary(lines: list[str], label: str) -> dict[str, object]:
    line = next(line for line in lines if line.startswith(f"{label}: "))
    parsed: dict[str, object] = json.loads(line.split(": ", 1)[1])
    return parsed


def _dead_letter(dispatch_id: str, thread_id: str, *, run: RunRecord | None = None) -> None:
    """A dispatch whose only attempt was nacked (max_attempts 1), with its run when given."""
    if run is not None:
        run_store.create_run(run=run)
    now = now_ms()
    run_id = run.run_id if run is not None else None
    store.enqueue(
        make_dispatch(dispatch_id, thread_id, run_id, created_at=now, available_at=now, max_attempts=1)
    )
    [claimed] = store.claim(thread_id, "c", 30_000, now)
    store.nack(dispatch_id, claimed.claim_token or "", now, "boom", now)


def _statuses(prefix: str) -> dict[str, str]:
    return dict(Dispatch.objects.filter(dispatch_id__startswith=prefix).values_list("dispatch_id", "status"))


def _dead_letters(n: int, prefix: str = "d") -> list[str]:
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    for dispatch_id in ids:
        _dead_letter(dispatch_id, f"t-{dispatch_id}")
    return ids


# --- mailbox_requeue -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_requeue_dry_run_says_what_it_would_do_and_changes_nothing() -> None:
    _dead_letters(3)
    finished = RunRecord(
        run_id="r-finished", thread_id="t-fin", status=RunStatus.DONE, dispatch_id="d-later",
        termination_reason=TerminationReason(type="natural_end"), created_at=1, updated_at=1,
    )  # fmt: skip
    _dead_letter("d9999", "t-fin", run=finished)  # its run ended otherwise: a real requeue refuses it
    before = {row.dispatch_id: row.updated_at for row in Dispatch.objects.all()}
    lines = _run("mailbox_requeue", "--all-dead-letter", "--dry-run", "--batch-size", "2")
    assert lines[:2] == [
        "batch 1: would requeue 2 of 2, refused 0 (2 would be requeued so far)",
        "batch 2: would requeue 1 of 2, refused 1 (3 would be requeued so far)",
    ]
    assert _summary(lines, "requeue") == {"dry_run": True, "requeued": 3}
    assert _summary(lines, "refused") == {"d9999": "r-finished"}
    assert set(_statuses("d").values()) == {DispatchStatus.DEAD_LETTER}
    assert {row.dispatch_id: row.updated_at for row in Dispatch.objects.all()} == before
    run = run_store.load_run(run_id="r-finished")
    assert run is not None and run.status is RunStatus.DONE and run.updated_at == 1


@pytest.mark.django_db
def test_requeue_limit_takes_the_first_n_dead_letters_in_id_order() -> None:
    ids = _dead_letters(7)
    lines = _run("mailbox_requeue", "--all-dead-letter", "--limit", "3", "--batch-size", "2")
    assert [line.split(":")[0] for line in lines if line.startswith("batch")] == ["batch 1", "batch 2"]
    assert _summary(lines, "requeue") == {"requeued": 3}
    statuses = _statuses("d")
    assert [d for d in ids if statuses[d] == DispatchStatus.QUEUED] == ids[:3]
    assert [d for d in ids if statuses[d] == DispatchStatus.DEAD_LETTER] == ids[3:]


@pytest.mark.django_db
def test_requeue_of_more_rows_than_a_batch_works_and_reports_progress() -> None:
    _dead_letters(250)
    lines = _run("mailbox_requeue", "--all-dead-letter")  # the default batch size, 100
    assert [line for line in lines if line.startswith("batch")] == [
        "batch 1: requeued 100 of 100, refused 0 (100 requeued so far)",
        "batch 2: requeued 100 of 100, refused 0 (200 requeued so far)",
        "batch 3: requeued 50 of 50, refused 0 (250 requeued so far)",
    ]
    assert _summary(lines, "requeue") == {"requeued": 250}
    assert set(_statuses("d").values()) == {DispatchStatus.QUEUED}


def _status_seen_by_another_connection(dispatch_id: str) -> str:
    seen: list[str] = []

    def read() -> None:
        try:
            seen.append(Dispatch.objects.get(pk=dispatch_id).status)
        finally:
            connection.close()

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(timeout=30)
    return seen[0]


@pytest.mark.django_db(transaction=True)
def test_each_requeue_batch_commits_before_the_next_one_starts() -> None:
    """Provoked: between two batches, another connection already sees the first batch requeued and the
    second not yet (one transaction for the whole requeue would show it nothing)."""
    ids = _dead_letters(4)
    batches = requeue_in_batches(thread_id=None, batch_size=2)
    first = next(batches)
    assert first.outcome.requeued == ids[:2]
    assert _status_seen_by_another_connection(ids[0]) == DispatchStatus.QUEUED
    assert _status_seen_by_another_connection(ids[2]) == DispatchStatus.DEAD_LETTER
    assert next(batches).outcome.requeued == ids[2:]
    assert next(batches, None) is None


@pytest.mark.django_db
def test_requeue_by_thread_and_by_id_in_batches() -> None:
    _dead_letters(3)
    _dead_letter("x1", "t-shared")
    _dead_letter("x2", "t-shared")
    lines = _run("mailbox_requeue", "--thread", "t-shared", "--batch-size", "1")
    assert _summary(lines, "requeue") == {"requeued": 2}
    assert set(_statuses("x").values()) == {DispatchStatus.QUEUED}
    assert set(_statuses("d").values()) == {DispatchStatus.DEAD_LETTER}  # other threads untouched
    with pytest.raises(CommandError, match="1 of the given dispatches are not dead-lettered"):
        _run("mailbox_requeue", "d0000", "x1", "--batch-size", "1")
    assert _statuses("d")["d0000"] == DispatchStatus.QUEUED  # the dead one of the two was requeued


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--limit", "0", "argument --limit: 0 is not >= 1"),
        ("--limit", "-5", "argument --limit: -5 is not >= 1"),
        ("--batch-size", "lots", "argument --batch-size: 'lots' is not a whole number"),
    ],
)
def test_bad_option_values_are_refused_naming_the_option(option: str, value: str, message: str) -> None:
    _dead_letters(1)
    for command in ("mailbox_requeue", "mailbox_reconcile", "mailbox_gc"):
        extra = ["--all-dead-letter"] if command == "mailbox_requeue" else []
        with pytest.raises(CommandError, match=message):
            _run(command, *extra, option, value)
    assert set(_statuses("d").values()) == {DispatchStatus.DEAD_LETTER}


# --- mailbox_reconcile ----------------------------------------------------------------------------


def _cancelled_with_open_runs(n: int) -> list[str]:
    """Dispatches cancelled without ending their run (as a crash between the two would leave them)."""
    now = now_ms()
    ids = []
    for i in range(n):
        thread_id, run_id, dispatch_id = f"t-rc{i}", f"r-rc{i}", f"d-rc{i}"
        run_store.create_run(
            run=RunRecord(run_id=run_id, thread_id=thread_id, created_at=now, updated_at=now)
        )
        store.enqueue(make_dispatch(dispatch_id, thread_id, run_id, created_at=now + i, available_at=now))
        assert store.cancel(dispatch_id, now + i) is not None
        ids.append(dispatch_id)
    return ids


def _done_runs(n: int) -> list[bool]:
    return [
        (run := run_store.load_run(run_id=f"r-rc{i}")) is not None and run.status is RunStatus.DONE
        for i in range(n)
    ]


@pytest.mark.django_db
def test_reconcile_dry_run_lists_the_runs_it_would_end_and_ends_none() -> None:
    ids = _cancelled_with_open_runs(3)
    lines = _run("mailbox_reconcile", "--dry-run")
    assert lines[:3] == [f"would end the run of dispatch {d}" for d in ids]
    assert _summary(lines, "reconcile") == {"dry_run": True, "runs_to_terminalize": 3}
    assert _done_runs(3) == [False, False, False]


@pytest.mark.django_db
def test_reconcile_goes_on_in_batches_until_the_limit() -> None:
    _cancelled_with_open_runs(5)
    lines = _run("mailbox_reconcile", "--batch-size", "2", "--limit", "3")
    assert [line for line in lines if line.startswith("batch")] == [
        "batch 1: ended 2 of 2 runs (2 so far)",
        "batch 2: ended 1 of 1 runs (3 so far)",
    ]
    assert _summary(lines, "reconcile") == {"runs_terminalized": 3}
    assert _done_runs(5) == [True, True, True, False, False]
    assert _summary(_run("mailbox_reconcile", "--batch-size", "2"), "reconcile") == {"runs_terminalized": 2}
    assert _done_runs(5) == [True] * 5


# --- mailbox_gc and mailbox_sweep ------------------------------------------------------------------


def _old_cancelled(n: int) -> None:
    for i in range(n):
        store.enqueue(make_dispatch(f"d-old{i}", f"t-old{i}", available_at=0, created_at=0))
        store.cancel(f"d-old{i}", 1 + i)  # ended long before the GC's TTL


@pytest.mark.django_db
def test_gc_dry_run_counts_and_keeps_everything() -> None:
    _old_cancelled(4)
    assert _summary(_run("mailbox_gc", "--dry-run"), "gc") == {"dry_run": True, "dispatches_to_purge": 4}
    assert Dispatch.objects.count() == 4


@pytest.mark.django_db
def test_gc_limit_purges_that_many_oldest_first_in_batches_and_stops() -> None:
    _old_cancelled(5)
    lines = _run("mailbox_gc", "--limit", "3", "--batch-size", "2")
    assert lines[:3] == [
        "batch 1: purged 2 terminal dispatches (2 so far)",
        "batch 2: purged 1 terminal dispatches (3 so far)",
        "stopped at --limit: the rest of the tick (epochs, journals, other apps) did not run",
    ]
    assert _summary(lines, "gc") == {"dispatches": 3, "stopped_at_limit": True}
    assert sorted(Dispatch.objects.values_list("dispatch_id", flat=True)) == ["d-old3", "d-old4"]
    summary = _summary(_run("mailbox_gc", "--batch-size", "2"), "gc")  # the rest, then the whole tick
    assert (summary["dispatches"], summary["epochs"]) == (2, 5)
    assert Dispatch.objects.count() == 0


@pytest.mark.django_db
def test_sweep_dry_run_lists_expired_leases_and_reclaims_nothing() -> None:
    store.enqueue(make_dispatch("d-exp", "t-exp", available_at=0, created_at=0))
    store.claim("t-exp", "dead-worker", 10, 1)
    lines = _run("mailbox_sweep", "--dry-run")
    assert lines == [
        "would reclaim dispatch d-exp (lease expired)",
        'sweep: {"dry_run": true, "expired_leases": 1}',
    ]
    assert Dispatch.objects.get(pk="d-exp").status == DispatchStatus.CLAIMED


@pytest.mark.parametrize(
    "command",
    [
        "mailbox_requeue",
        "mailbox_reconcile",
        "mailbox_gc",
        "mailbox_sweep",
        "mailbox_status",
        "mailbox_recover",
    ],
)
def test_every_option_of_every_command_has_help(command: str) -> None:
    parser = load_command_class("mailbox_app", command).create_parser("manage.py", command)
    own = [a for a in parser._actions if a.dest not in DJANGO_OPTIONS]
    assert parser.description and len(parser.description) > 40
    assert [a.dest for a in own if not a.help] == []


DJANGO_OPTIONS = {
    "help", "version", "verbosity", "settings", "pythonpath", "traceback", "no_color", "force_color",
    "skip_checks",
}  # fmt: skip
