"""The admin of token budgets (mailbox_app/admin/budgets.py) and of a run's usage (runs_app/admin.py): an
operator with the permissions adds an override through the form (an owner's key must be a user's id, an
agent's a configured agent), the list shows each row's window now and the setting's defaults, and the
next claim obeys the row; a run's page shows its usage per attempt."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from mailbox_app import store
from mailbox_app.contract.budgets import TokenBudgets, WindowBudget
from mailbox_app.contract.ids import now_ms
from mailbox_app.models import TokenBudget
from runs_app.models import Run, Thread
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db
CHANGELIST = "admin:mailbox_app_tokenbudget_changelist"
ADD = "admin:mailbox_app_tokenbudget_add"


@pytest.fixture(autouse=True)
def fast_password_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def operator(django_user_model: Any) -> Client:
    user = django_user_model.objects.create_user("budgeteer", password="pw", is_staff=True)
    codenames = [f"{action}_tokenbudget" for action in ("view", "add", "change", "delete")] + ["view_run"]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def _add(client: Client, **fields: Any) -> Any:
    data = {"scope": "owner", "key": "", "tokens": 100, "window_s": 60, "note": ""} | fields
    return client.post(reverse(ADD), data)


def test_an_override_is_added_through_the_form_and_the_next_claim_obeys_it(
    operator: Client, django_user_model: Any, settings: Any
) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = TokenBudgets(
        enabled=True, owner=WindowBudget(tokens=1_000_000, window_s=60), reserve_tokens=300
    )
    customer = django_user_model.objects.create_user("customer", password="pw")
    for i in range(2):
        store.enqueue(
            make_dispatch(f"c{i}", f"C-t{i}", available_at=0, created_at=0), owner_key=str(customer.pk)
        )
    response = _add(operator, key=str(customer.pk), tokens=300, window_s=3600, note="plan: small")
    assert response.status_code == 302, response.content[:2000]
    row = TokenBudget.objects.get()
    assert (row.scope, row.key, row.tokens, row.window_s) == ("owner", str(customer.pk), 300, 3600)
    now = now_ms()
    assert store.claim("C-t0", "w", 30_000, now) and store.claim("C-t1", "w", 30_000, now) == []

    page = operator.get(reverse(CHANGELIST)).content.decode()
    assert "Budgets are on" in page and "<strong>owner</strong> 1000000 tokens / 1 min 00 s" in page
    assert "customer" in page  # the owner's name beside its key
    assert "300 of 300 used (spent: new runs wait); resets in" in page
    assert f"<td>owner</td><td>{customer.pk}</td><td>300</td>" in page  # the window open now


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"key": "not-a-user"}, "no user has the id"),
        ({"key": "999999"}, "no user has the id"),
        ({"scope": "agent", "key": "no-such-agent"}, "no agent &#x27;no-such-agent&#x27; is configured"),
        ({"key": "1", "tokens": -1}, "tokens_gte_0"),
        ({"scope": "agent", "key": "echo", "window_s": 0}, "window_valid"),
        ({"scope": "team", "key": "echo"}, "Select a valid choice"),
    ],
)
def test_the_form_refuses_a_key_that_names_nothing_and_bad_numbers(
    operator: Client, fields: dict[str, Any], error: str
) -> None:
    response = _add(operator, **fields)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert TokenBudget.objects.count() == 0


def test_with_budgets_off_the_list_says_so(operator: Client) -> None:
    TokenBudget.objects.create(scope="agent", key="echo", tokens=5, window_s=60)
    page = operator.get(reverse(CHANGELIST)).content.decode()
    assert "Budgets are off" in page and "budgets are off (AWAKEN_TOKEN_BUDGETS unset)" in page


def test_a_runs_page_shows_its_usage_per_attempt(operator: Client) -> None:
    Thread.objects.create(id="t-u", created_at=1, updated_at=1)
    Run.objects.create(
        run_id="r-u",
        thread_id="t-u",
        status="done",
        created_at=1,
        updated_at=1,
        input_tokens=6,
        output_tokens=10,
        cost=0.25,
        usage_attempts=[
            {"dispatch_id": "d-u", "attempt": 1, "input_tokens": 2, "output_tokens": 2, "cost": None,
             "ended": "lost", "recorded_at": 5},
            {"dispatch_id": "d-u", "attempt": 2, "input_tokens": 4, "output_tokens": 8, "cost": 0.25,
             "ended": "finished", "recorded_at": 9},
        ],
    )  # fmt: skip
    page = operator.get(reverse("admin:runs_app_run_change", args=["r-u"])).content.decode()
    assert "6 / 10" in page and "0.25" in page
    assert "2 / 2 (lost)" in page and "4 / 8 · cost 0.25 (finished)" in page
