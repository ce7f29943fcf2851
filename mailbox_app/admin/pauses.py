"""Pauses (docs/inbox.md): the list of what is paused, by whom and since when; adding one pauses a thread,
an agent or everything (optionally stopping the runs of the scope in progress), and the confirmed
"Resume" action lifts the selected ones and rings what they held. Both go through
mailbox_app/services/pauses.py; a pause row is never edited or deleted by a form."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.safestring import SafeString

from mailbox_app.admin.confirm import Confirmation, Planned, bounded, confirmation_page, confirmed
from mailbox_app.admin.links import ADMIN_CSS, ADMIN_JS, counted, id_cell, moment, thread_url
from mailbox_app.contract.inbox import PauseScope
from mailbox_app.models import Pause
from mailbox_app.services import pauses

if TYPE_CHECKING:
    PauseAdminBase = admin.ModelAdmin[Pause]
    PauseFormBase = forms.ModelForm[Pause]
else:  # ModelAdmin and ModelForm are generic only in django-stubs
    PauseAdminBase = admin.ModelAdmin
    PauseFormBase = forms.ModelForm

RESUME = Confirmation(
    action="resume_pauses",
    title="Resume paused scopes",
    question="Resume these? Their queued work is claimed again, in its order, as workers are free (each "
    "thread of the scope with queued work is rung). A thread stays held while another pause covers it.",
    columns=("paused", "by · since"),
    button="Yes, resume them",
)


class PauseForm(PauseFormBase):
    interrupt = forms.BooleanField(
        required=False, help_text="also stop the runs of this scope in progress (what is queued stays queued)"
    )

    class Meta:
        model = Pause
        fields = ("scope", "key", "reason")
        help_texts = {
            "key": "the thread id or the agent id; empty for everything",
            "reason": "shown with the pause (here and in the why-blocked report)",
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        scope, key = data.get("scope"), (data.get("key") or "").strip()
        if scope == PauseScope.ALL.value and key:
            self.add_error("key", "pausing everything takes no key")
        if scope in (PauseScope.THREAD.value, PauseScope.AGENT.value) and not key:
            self.add_error("key", f"name the {scope} to pause")
        data["key"] = key
        return data

    def _get_validation_exclusions(self) -> set[str]:
        """A second pause of a scope is not an error: the first one stands (the service says so), so the
        model's constraints on (scope, key) are not checked here; `clean` checks the key's presence."""
        return {*super()._get_validation_exclusions(), "scope", "key"}  # type: ignore[misc]


@admin.register(Pause)
class PauseAdmin(PauseAdminBase):
    form = PauseForm
    list_display = ("paused", "paused_by", "operator", "since", "reason")
    list_display_links = None
    list_filter = ("scope", "by_operator")
    search_fields = ("key__startswith", "paused_by")
    ordering = ("-created_at",)
    actions = ("resume_pauses",)

    class Media:
        css = {"all": (ADMIN_CSS,)}
        js = (ADMIN_JS,)

    def has_change_permission(self, request: HttpRequest, obj: Pause | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Pause | None = None) -> bool:
        return False  # a resume rings what the pause held: the action, not a delete

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailbox_app.change_dispatch")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_operate_permission(request)

    def save_model(self, request: HttpRequest, obj: Pause, form: Any, change: bool) -> None:
        done = pauses.pause(
            PauseScope(obj.scope),
            obj.key,
            paused_by=f"admin:{request.user.get_username()}",
            by_operator=True,
            reason=obj.reason,
            interrupt=bool(form.cleaned_data.get("interrupt")),
        )
        obj.pk = Pause.objects.filter(scope=obj.scope, key=obj.key).values_list("pk", flat=True).first()
        if not done.created:
            self.message_user(
                request,
                f"{done.pause.label} was paused already, by {done.pause.paused_by}: that pause stands.",
                messages.WARNING,
            )
        if done.stopped_runs:
            self.message_user(request, f"Asked {counted(len(done.stopped_runs), 'run')} to stop.")

    @admin.display(description="paused", ordering="scope")
    def paused(self, obj: Pause) -> SafeString | str:
        if obj.scope == PauseScope.THREAD.value:
            return id_cell(obj.key, thread_url(obj.key))
        return "everything" if obj.scope == PauseScope.ALL.value else f"agent {obj.key}"

    @admin.display(description="operator", boolean=True, ordering="by_operator")
    def operator(self, obj: Pause) -> bool:
        return obj.by_operator

    @admin.display(description="since", ordering="created_at")
    def since(self, obj: Pause) -> SafeString:
        return moment(obj.created_at)

    @admin.action(description="Resume selected pauses…", permissions=["operate"])
    def resume_pauses(self, request: HttpRequest, queryset: QuerySet[Pause]) -> HttpResponse | None:
        rows = bounded(self, request, queryset)
        if rows is None or not confirmed(request):
            plan = [
                Planned(str(r), f"{r.paused_by} · {moment(r.created_at)}", "paused", "resumed")
                for r in rows or []
            ]
            return None if rows is None else confirmation_page(self, request, rows, RESUME, plan)
        rung = resumed = 0
        for row in rows:
            done = pauses.resume(PauseScope(row.scope), row.key, by_operator=True)
            if done.pause is not None:
                resumed += 1
                rung += done.rung_threads
        self.message_user(
            request, f"Resumed {counted(resumed, 'pause')}; rang {counted(rung, 'thread')} with queued work."
        )
        return None
