"""Token budgets: the per-owner and per-agent overrides of `AWAKEN_TOKEN_BUDGETS` (add, change, delete),
each with its window's usage now, and above the list the setting's defaults and every window open now
(docs/replay-and-budgets.md). A change applies to the next claim: the claims read these rows themselves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse

from mailbox_app.admin.links import ADMIN_CSS, ADMIN_JS
from mailbox_app.agents.registry import configured_agents
from mailbox_app.contract.timefmt import format_duration_ms
from mailbox_app.models import TokenBudget
from mailbox_app.services import budgets

if TYPE_CHECKING:
    TokenBudgetAdminBase = admin.ModelAdmin[TokenBudget]
    TokenBudgetFormBase = forms.ModelForm[TokenBudget]
else:  # ModelAdmin and ModelForm are generic only in django-stubs
    TokenBudgetAdminBase = admin.ModelAdmin
    TokenBudgetFormBase = forms.ModelForm


class TokenBudgetForm(TokenBudgetFormBase):
    """An owner's key is a user's id (the dispatch queue keys owners by it); an agent's is its id."""

    class Meta:
        model = TokenBudget
        fields = ("scope", "key", "tokens", "window_s", "note")
        help_texts = {
            "key": "owner: the user's id (as a number); agent: the agent id (see AWAKEN_AGENTS)",
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        scope, key = data.get("scope"), (data.get("key") or "").strip()
        if key != data.get("key"):
            data["key"] = key
        if scope == "owner" and key and not _is_user_id(key):
            self.add_error("key", f"no user has the id {key!r}: an owner's key is a user's id")
        if scope == "agent" and key and key not in configured_agents():
            self.add_error("key", f"no agent {key!r} is configured (AWAKEN_AGENTS, or echo)")
        return data


def _is_user_id(key: str) -> bool:
    return key.isdigit() and get_user_model().objects.filter(pk=int(key)).exists()


@admin.register(TokenBudget)
class TokenBudgetAdmin(TokenBudgetAdminBase):
    form = TokenBudgetForm
    list_display = ("scope", "key", "who", "tokens", "window", "used_now", "note")
    list_filter = ("scope",)
    search_fields = ("key", "note")
    ordering = ("scope", "key")
    change_list_template = "admin/mailbox_app/tokenbudget/change_list.html"

    class Media:
        css = {"all": (ADMIN_CSS,)}
        js = (ADMIN_JS,)

    @admin.display(description="who")
    def who(self, obj: TokenBudget) -> str:
        if obj.scope != "owner":
            return "agent"
        user = get_user_model().objects.filter(pk=int(obj.key)).first() if obj.key.isdigit() else None
        return "—" if user is None else str(user.get_username())

    @admin.display(description="window", ordering="window_s")
    def window(self, obj: TokenBudget) -> str:
        return format_duration_ms(obj.window_s * 1000)

    @admin.display(description="this window")
    def used_now(self, obj: TokenBudget) -> str:
        return budgets.status_of(obj.scope, obj.key).text

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        setting = budgets.configured()
        context = {
            **(extra_context or {}),
            "budgets_enabled": setting.enabled,
            "budget_defaults": [
                (scope, default.tokens, format_duration_ms(default.window_ms))
                for scope, default in (("owner", setting.owner), ("agent", setting.agent))
                if default is not None
            ],
            "reserve_tokens": setting.reserve_tokens,
            "open_windows": budgets.open_windows() if setting.enabled else [],
        }
        return super().changelist_view(request, extra_context=context)
