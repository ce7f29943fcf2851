"""The dispatch admin's actions: cancel queued dispatches, requeue dead letters, interrupt threads.

Each goes through a confirmation page that lists what will change (mailbox_app/admin/confirm.py), then
through the service layer (`services.operator`, `services.mailbox.interrupt`): the same code paths as
the API and the management commands, the store's declared transitions. Every moved row gets a LogEntry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from mailbox_app import store
from mailbox_app.admin.confirm import Confirmation, Planned, bounded, confirmation_page, confirmed
from mailbox_app.admin.display import listing
from mailbox_app.admin.links import counted, dispatch_url, id_cell, run_url, short_id
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.models import Dispatch, ThreadEpoch
from mailbox_app.services import mailbox
from mailbox_app.services.operator import Requeued, cancel_queued, requeue_dead_letters

if TYPE_CHECKING:
    DispatchAdminBase = admin.ModelAdmin[Dispatch]
else:  # ModelAdmin is generic only in django-stubs
    DispatchAdminBase = admin.ModelAdmin

QUEUED, CLAIMED, DEAD = DispatchStatus.QUEUED, DispatchStatus.CLAIMED, DispatchStatus.DEAD_LETTER

CANCEL = Confirmation(
    action="cancel_queued",
    title="Cancel queued dispatches",
    question="Cancel these dispatches? A queued one is cancelled and its run ends as cancelled. A dispatch "
    "that is not queued (running, or already ended) is left alone: cancelling a running run is an interrupt.",
    columns=("dispatch", "thread · run"),
    button="Yes, cancel the queued ones",
)
REQUEUE = Confirmation(
    action="requeue_dead_letter",
    title="Requeue dead-lettered dispatches",
    question="Requeue these dead letters? Each goes back to queued, available now, with its attempts counted "
    "from 0, and the run it ended is reopened so the work's new result lands on it. A dead letter whose run "
    "ended otherwise (naturally, or by another dispatch) stays dead-lettered.",
    columns=("dispatch", "thread · run"),
    button="Yes, requeue the dead letters",
)
INTERRUPT = Confirmation(
    action="interrupt_thread",
    title="Interrupt threads",
    question="Interrupt the threads of these dispatches? Each thread's epoch moves on: its queued dispatches "
    "are superseded (they will not run) and its running run is asked to stop.",
    columns=("thread", "epoch now"),
    button="Yes, interrupt the threads",
)


def _dispatch_row(d: Dispatch, change: str) -> Planned:
    context = format_html("{} · {}", id_cell(d.thread_id), id_cell(d.run_id, run_url(d.run_id)))
    return Planned(id_cell(d.dispatch_id, dispatch_url(d.dispatch_id)), context, str(d.status), change)


def _cancel_change(d: Dispatch) -> str:
    return f"queued → cancelled; run {short_id(d.run_id)} ends as cancelled" if d.status == QUEUED else ""


def _requeue_change(d: Dispatch) -> str:
    if d.status != DEAD:
        return ""
    return f"dead letter → queued, available now, attempts from 0; run {short_id(d.run_id)} reopened"


def _interrupt_plan(threads: list[str]) -> list[Planned]:
    live = Dispatch.objects.filter(thread_id__in=threads, status__in=[QUEUED, CLAIMED])
    queued = Counter(live.filter(status=QUEUED).values_list("thread_id", flat=True))
    running = dict(live.filter(status=CLAIMED).values_list("thread_id", "dispatch_id"))
    epochs = dict(ThreadEpoch.objects.filter(thread_id__in=threads).values_list("thread_id", "current_epoch"))
    plan = []
    for thread_id in threads:
        epoch, holder = epochs.get(thread_id, 0), running.get(thread_id)
        now = f"{counted(queued[thread_id], 'queued')}, {'1 running' if holder else 'none running'}"
        change = ""
        if queued[thread_id] or holder:
            superseded = counted(queued[thread_id], "queued dispatch", "queued dispatches")
            change = f"epoch {epoch} → {epoch + 1}; {superseded} superseded"
            change += f"; running {short_id(holder)} asked to stop" if holder else ""
        plan.append(Planned(id_cell(thread_id), str(epoch), now, change))
    return plan


class DispatchActions(DispatchAdminBase):
    """The actions of `DispatchAdmin` (mailbox_app/admin/dispatches.py), for users who may change
    dispatches (the change form itself never saves)."""

    actions = ("cancel_queued", "requeue_dead_letter", "interrupt_thread")

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailbox_app.change_dispatch")

    @admin.action(description="Cancel selected queued dispatches…", permissions=["operate"])
    def cancel_queued(self, request: HttpRequest, queryset: QuerySet[Dispatch]) -> HttpResponse | None:
        rows = bounded(self, request, queryset)
        if rows is None or not confirmed(request):
            plan = [_dispatch_row(d, _cancel_change(d)) for d in rows or []]
            return None if rows is None else confirmation_page(self, request, rows, CANCEL, plan)
        cancelled: list[str] = []
        skipped: list[str] = []
        for dispatch in rows:
            # only while queued (the store's statement decides): a row claimed meanwhile is skipped
            # rather than having its running run cancelled
            if cancel_queued(dispatch.dispatch_id) is not None:
                cancelled.append(dispatch.dispatch_id)
            else:
                current = store.load_dispatch(dispatch.dispatch_id)
                skipped.append(f"{dispatch.dispatch_id} ({current.status.value if current else 'gone'})")
        self._log(request, cancelled, "Cancelled (queued) from the admin")
        head = f"Cancelled {counted(len(cancelled), 'queued dispatch', 'queued dispatches')}"
        self._report(request, head, skipped, "not queued")
        return None

    @admin.action(description="Requeue selected dead-lettered dispatches…", permissions=["operate"])
    def requeue_dead_letter(self, request: HttpRequest, queryset: QuerySet[Dispatch]) -> HttpResponse | None:
        rows = bounded(self, request, queryset)
        if rows is None or not confirmed(request):
            plan = [_dispatch_row(d, _requeue_change(d)) for d in rows or []]
            return None if rows is None else confirmation_page(self, request, rows, REQUEUE, plan)
        dead = [d.dispatch_id for d in rows if d.status == DEAD]
        outcome = requeue_dead_letters(dispatch_ids=dead) if dead else Requeued()
        moved = set(outcome.requeued) | set(outcome.refused)
        skipped = [f"{d.dispatch_id} ({d.status})" for d in rows if d.dispatch_id not in moved]
        self._log(request, outcome.requeued, "Requeued (dead letter) from the admin")
        plural = ("dead-lettered dispatch", "dead-lettered dispatches")
        head = f"Requeued {counted(len(outcome.requeued), *plural)}"
        if outcome.refused:
            kept = [f"{d} (run {r})" for d, r in sorted(outcome.refused.items())]
            head += (
                f". Left {counted(len(kept), 'dispatch', 'dispatches')} dead-lettered, its run finished "
                f"naturally or by another dispatch: {listing(kept)}"
            )
        self._report(request, head, skipped, "not dead-lettered")
        return None

    @admin.action(description="Interrupt the threads of selected dispatches…", permissions=["operate"])
    def interrupt_thread(self, request: HttpRequest, queryset: QuerySet[Dispatch]) -> HttpResponse | None:
        rows = bounded(self, request, queryset)
        threads = sorted({d.thread_id for d in rows or []})
        if rows is None or not confirmed(request):
            plan = _interrupt_plan(threads)
            return None if rows is None else confirmation_page(self, request, rows, INTERRUPT, plan)
        active = set(
            Dispatch.objects.filter(thread_id__in=threads, status__in=[QUEUED, CLAIMED]).values_list(
                "thread_id", flat=True
            )
        )
        done = [self._interrupt(request, thread_id) for thread_id in threads if thread_id in active]
        skipped = [t for t in threads if t not in active]
        head = f"Interrupted {counted(len(done), 'thread')}" + (f": {'; '.join(done)}" if done else "")
        self._report(request, head, skipped, "nothing queued or running", noun=("thread", "threads"))
        return None

    def _interrupt(self, request: HttpRequest, thread_id: str) -> str:
        details = mailbox.interrupt(thread_id)
        stopping = details.active_dispatch
        summary = f"{thread_id}: epoch now {details.new_dispatch_epoch}, "
        summary += f"{counted(details.superseded_count, 'queued dispatch', 'queued dispatches')} superseded"
        if stopping is not None:
            summary += f", stop requested for running {stopping.dispatch_id} ({stopping.claimed_by})"
        superseded = [d.dispatch_id for d in details.superseded_dispatches]
        self._log(request, superseded, "Superseded by an interrupt from the admin")
        return summary

    def _log(self, request: HttpRequest, dispatch_ids: Iterable[str], message: str) -> None:
        """An audit trail in the admin's history (LogEntry) for each dispatch an action moved."""
        rows = list(Dispatch.objects.filter(dispatch_id__in=list(dispatch_ids)))
        if rows:
            LogEntry.objects.log_actions(
                user_id=cast(int, request.user.pk), queryset=rows, action_flag=CHANGE, change_message=message
            )

    def _report(
        self,
        request: HttpRequest,
        head: str,
        skipped: list[str],
        why: str,
        *,
        noun: tuple[str, str] = ("dispatch", "dispatches"),
    ) -> None:
        if skipped:
            head += f". Skipped {counted(len(skipped), *noun)}, {why}: {listing(skipped)}"
        level = messages.SUCCESS if not skipped else messages.WARNING
        self.message_user(request, head + ".", level)
