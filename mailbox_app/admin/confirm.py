"""The confirmation page every state-moving admin action goes through (Django's `delete_selected`
pattern): the first POST lists each selected row, what it is now and what the action will do to it (or
that it is left alone); only the second POST, `post=yes`, acts. The rows are re-checked when the action
runs (the store's statements decide), so a row that changed in between is skipped and reported.

An action moves at most `ACTION_ROW_LIMIT` rows: the page names each one, and moving more is the
management commands' job (`manage.py mailbox_requeue --limit ... --batch-size ...`), in bounded batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.admin import helpers
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.safestring import SafeString

ACTION_ROW_LIMIT = 500
TEMPLATE = "admin/mailbox_app/action_confirmation.html"


@dataclass(frozen=True, slots=True)
class Planned:
    """One row of a confirmation page."""

    label: SafeString | str  # the row, e.g. an id cell
    context: SafeString | str  # where it belongs (its thread, its run, a URL)
    now: str  # its state now
    change: str  # what the action will do to it; "" when the action leaves it alone

    @property
    def skipped(self) -> bool:
        return not self.change


def confirmed(request: HttpRequest) -> bool:
    return request.POST.get("post") == "yes"


def bounded(model_admin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> list[Any] | None:
    """The selected rows, or None (with an error message) when there are more than an action moves."""
    rows = list(queryset.order_by("pk")[: ACTION_ROW_LIMIT + 1])
    if len(rows) > ACTION_ROW_LIMIT:
        noun = model_admin.model._meta.verbose_name_plural
        model_admin.message_user(
            request,
            f"More than {ACTION_ROW_LIMIT} {noun} selected: an admin action moves at most "
            f"{ACTION_ROW_LIMIT}. Narrow the selection, or use the management command (docs/admin.md). "
            "Nothing was changed.",
            messages.ERROR,
        )
        return None
    return rows


@dataclass(frozen=True, slots=True)
class Confirmation:
    action: str  # the action's name, posted back
    title: str  # e.g. "Cancel queued dispatches"
    question: str  # the sentence above the table
    columns: tuple[str, str]  # the headings of `label` and `context`
    button: str  # the confirming button's text


def confirmation_page(
    model_admin: Any,
    request: HttpRequest,
    rows: list[Model],
    confirmation: Confirmation,
    plan: list[Planned],
) -> TemplateResponse:
    changing = sum(not p.skipped for p in plan)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": confirmation.title,
        "subtitle": None,
        "opts": model_admin.model._meta,
        "media": model_admin.media,
        "confirmation": confirmation,
        "plan": plan,
        "changing": changing,
        "left_alone": len(plan) - changing,
        "pks": [row.pk for row in rows],
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, TEMPLATE, context)
