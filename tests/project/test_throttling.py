"""Issue 18 #12: the API's throttle counts are shared by every web process (Redis), atomically; requests
without valid credentials are throttled (429) instead of answering 401 forever; repeated failed admin
logins for one username from one address are refused."""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from rest_framework.authtoken.models import Token

from awaken_project.admin_login import failure_key
from awaken_project.throttling import count_in_window, throttle_cache
from tests.support.servers import asgi_server

RUNS = "/api/v1/runs"


def rates(settings: Any, **scopes: str) -> None:
    framework = dict(settings.REST_FRAMEWORK)
    framework["DEFAULT_THROTTLE_RATES"] = {**framework["DEFAULT_THROTTLE_RATES"], **scopes}
    settings.REST_FRAMEWORK = framework


def an_address() -> str:
    """A client address no other test uses (the counts live in the shared Redis)."""
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


def not_near_a_window_edge(period_s: int) -> None:
    """Counting starts well inside a fixed window, so the whole burst lands in one."""
    left = period_s - time.time() % period_s
    if left < 30:
        time.sleep(left + 0.1)


def concurrently(count: int, action: Callable[[], Any]) -> list[Any]:
    """`action` in `count` threads released together; their results."""
    barrier, results, lock = threading.Barrier(count), [], threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            result = action()
        finally:
            connection.close()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.django_db
def test_an_anonymous_burst_is_throttled(settings: Any) -> None:
    rates(settings, anon="3/day", user="1000000/day")
    not_near_a_window_edge(86_400)
    client = Client(REMOTE_ADDR=an_address())
    answers = [client.get(RUNS).status_code for _ in range(3)]
    assert answers == [401, 401, 401]
    throttled = client.get(RUNS)
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) > 0
    # a wrong token is no way around it
    assert client.get(RUNS, HTTP_AUTHORIZATION="Token " + "0" * 40).status_code == 429
    # another address has its own budget; a user with a valid token is not an anonymous caller
    assert Client(REMOTE_ADDR=an_address()).get(RUNS).status_code == 401
    user = get_user_model().objects.create_user(username=f"u{uuid.uuid4().hex[:8]}", password="pw")
    token = Token.objects.create(user=user).key
    assert client.get(RUNS, HTTP_AUTHORIZATION=f"Token {token}").status_code == 200


def test_a_concurrent_burst_gets_exactly_the_limit() -> None:
    """The race DRF's read-modify-write history loses: 40 increments at once, each a different count."""
    key = f"test-burst:{uuid.uuid4().hex}"
    counts = concurrently(40, lambda: count_in_window(throttle_cache(), key, timeout=60))
    assert sorted(counts) == list(range(1, 41))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_web_processes_share_one_users_budget(tmp_path: Path) -> None:
    not_near_a_window_edge(86_400)
    user = get_user_model().objects.create_user(username=f"u{uuid.uuid4().hex[:8]}", password="pw")
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    env = {"AWAKEN_API_THROTTLE_RATE": "4/day"}

    def get(port: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", RUNS, headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()

    with asgi_server(tmp_path, env) as first, asgi_server(tmp_path, env) as second:
        assert [get(first.port), get(first.port), get(first.port)] == [200, 200, 200]
        # the second process sees the first one's three: one left
        assert [get(second.port), get(second.port)] == [200, 429]
        assert get(first.port) == 429


@pytest.fixture
def admin_user(db: None) -> Any:
    name = f"admin{uuid.uuid4().hex[:8]}"
    return get_user_model().objects.create_superuser(name, f"{name}@example.com", "right-password")


def login(client: Client, username: str, password: str) -> int:
    response = client.post(
        "/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"}
    )
    return int(response.status_code)


def test_repeated_bad_admin_logins_are_refused(settings: Any, admin_user: Any) -> None:
    settings.ADMIN_LOGIN_MAX_FAILURES = 3
    address = an_address()
    client = Client(REMOTE_ADDR=address)
    assert [login(client, admin_user.username, "wrong") for _ in range(3)] == [200, 200, 200]
    refused = client.post("/admin/login/", {"username": admin_user.username, "password": "right-password"})
    assert refused.status_code == 429 and b"Too many failed logins" in refused.content
    assert int(refused["Retry-After"]) == settings.ADMIN_LOGIN_LOCKOUT_S
    # the same username from another address, and another username from this one, are not locked out
    assert login(Client(REMOTE_ADDR=an_address()), admin_user.username, "right-password") == 302
    assert login(client, "someone-else", "wrong") == 200
    throttle_cache().delete(failure_key(address, admin_user.username))  # (the lockout expires)
    assert login(client, admin_user.username, "right-password") == 302


def test_a_success_forgets_the_failures(settings: Any, admin_user: Any) -> None:
    settings.ADMIN_LOGIN_MAX_FAILURES = 2
    client = Client(REMOTE_ADDR=an_address())
    assert login(client, admin_user.username, "wrong") == 200
    assert login(client, admin_user.username, "right-password") == 302
    client.logout()
    assert [login(client, admin_user.username, "wrong") for _ in range(2)] == [200, 200]
    assert login(client, admin_user.username, "wrong") == 429


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_login_burst_tries_no_more_passwords_than_the_limit(settings: Any) -> None:
    settings.ADMIN_LOGIN_MAX_FAILURES = 3
    name = f"admin{uuid.uuid4().hex[:8]}"
    get_user_model().objects.create_superuser(name, f"{name}@example.com", "right-password")
    address = an_address()
    answers = concurrently(8, lambda: login(Client(REMOTE_ADDR=address), name, "wrong"))
    assert sorted(answers) == [200, 200, 200, 429, 429, 429, 429, 429]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "form",
    [
        {},
        {"username": "x" * 10_000, "password": "p"},
        {"username": "\x00", "password": ""},
        {"password": "p"},
    ],
)
def test_a_malformed_login_form_is_a_form_error_not_a_500(form: dict[str, str]) -> None:
    client = Client(REMOTE_ADDR=an_address())
    assert client.post("/admin/login/", form).status_code == 200  # the login page, with its errors
    assert client.get("/admin/login/").status_code == 200
