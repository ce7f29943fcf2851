"""The API's token cache (runs_app/api/auth.py): no query on a hit, bounded and expiring, and revocation
that takes effect at once in this process and in other server processes (runs_app/api/revocation.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.test import APIClient, APIRequestFactory

from runs_app.api import revocation
from runs_app.api.auth import CachedTokenAuthentication, tokens
from tests.support.api import new_user
from tests.support.servers import WebServer, asgi_server
from tests.support.waiting import wait_until

THREADS = "/api/v1/threads"


def token_queries(queries: list[dict[str, Any]]) -> list[str]:
    return [q["sql"] for q in queries if "authtoken_token" in q["sql"]]


@pytest.fixture
def cache_on() -> Iterator[None]:
    """This process's listener subscribed (the cache is trusted), and an empty cache."""
    tokens.listener.ensure_running()
    wait_until(tokens.listener.trusted, timeout=10, what="the revocation listener subscribed")
    tokens.clear()
    yield
    tokens.clear()


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


# --- queries ---------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_hit_costs_no_query(cache_on: None) -> None:
    user = new_user("hit")
    key = Token.objects.create(user=user).key
    client = client_for(key)
    with CaptureQueriesContext(connection) as first:
        assert client.get(THREADS).status_code == 200
    with CaptureQueriesContext(connection) as second:
        assert client.get(THREADS).status_code == 200
    # the miss read the token and its user in one query; the hit read nothing for authentication
    assert len(token_queries(first.captured_queries)) == 1
    assert token_queries(second.captured_queries) == []
    assert len(second.captured_queries) == len(first.captured_queries) - 1
    request = APIRequestFactory().get(THREADS, HTTP_AUTHORIZATION=f"Token {key}")
    with CaptureQueriesContext(connection) as alone:
        authenticated, token = CachedTokenAuthentication().authenticate(request)  # type: ignore[misc]
    assert (len(alone.captured_queries), authenticated.pk, token.key) == (0, user.pk, key)


@pytest.mark.django_db(transaction=True)
def test_each_request_gets_its_own_user_object(cache_on: None) -> None:
    key = Token.objects.create(user=new_user("copies")).key
    first, _ = tokens.authenticate(key)
    first.first_name = "changed by one request"
    second, token = tokens.authenticate(key)
    assert second.first_name == "" and second is not first and token.user is second


@pytest.mark.django_db(transaction=True)
def test_the_cache_is_bounded_and_expires(cache_on: None, settings: Any) -> None:
    settings.AWAKEN_AUTH_CACHE_MAX_ENTRIES = 2
    keys = [Token.objects.create(user=new_user(f"lru-{i}")).key for i in range(3)]
    for key in keys:
        tokens.authenticate(key)
    assert len(tokens) == 2 and tokens.get(keys[0]) is None and tokens.get(keys[2]) is not None
    settings.AWAKEN_AUTH_CACHE_TTL_MS = 100
    tokens.clear()
    tokens.authenticate(keys[1])
    assert tokens.get(keys[1]) is not None
    time.sleep(0.15)  # past the TTL (a fixed expiry, not a race)
    assert tokens.get(keys[1]) is None
    settings.AWAKEN_AUTH_CACHE_TTL_MS = 0  # no cache at all
    tokens.authenticate(keys[1])
    assert len(tokens) == 0


@pytest.mark.django_db(transaction=True)
def test_without_the_revocation_channel_nothing_is_cached_or_read(cache_on: None) -> None:
    key = Token.objects.create(user=new_user("untrusted")).key
    tokens.authenticate(key)
    assert tokens.get(key) is not None
    # when this process's subscription is cut (Redis drops it), the cache is not read, then emptied
    killer = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        killed = killer.client_kill_filter(_type="pubsub")
    finally:
        killer.close()
    assert killed >= 1
    wait_until(lambda: not tokens.listener.trusted() or len(tokens) == 0, what="the gap noticed")
    # and once subscribed again it caches afresh
    wait_until(tokens.listener.trusted, timeout=10, what="subscribed again")
    assert tokens.get(key) is None
    with CaptureQueriesContext(connection) as miss:
        tokens.authenticate(key)
    assert len(token_queries(miss.captured_queries)) == 1


# --- revocation in this process ---------------------------------------------------------------------


@pytest.mark.django_db
def test_deleting_rotating_or_deactivating_takes_effect_at_once_here(cache_on: None) -> None:
    user = new_user("here")
    token = Token.objects.create(user=user)
    key = token.key  # (delete() sets the primary key, here the key, to None)
    client = client_for(key)
    assert client.get(THREADS).status_code == 200
    assert tokens.get(key) is not None  # cached
    # delete
    token.delete()
    assert client.get(THREADS).status_code == 401
    # rotate (DRF's way: delete the old key, create a new one)
    old = Token.objects.create(user=user)
    old_key = old.key
    assert client_for(old_key).get(THREADS).status_code == 200
    old.delete()
    new = Token.objects.create(user=user)
    assert client_for(old_key).get(THREADS).status_code == 401
    assert client_for(new.key).get(THREADS).status_code == 200
    # deactivate the user
    user.is_active = False
    user.save()
    answer = client_for(new.key).get(THREADS)
    assert answer.status_code == 401 and answer.json()["error"] == "User inactive or deleted."
    assert tokens.get(new.key) is None


@pytest.mark.django_db
def test_a_login_does_not_evict_and_a_bad_key_costs_no_query(cache_on: None) -> None:
    user = new_user("login")
    key = Token.objects.create(user=user).key
    tokens.authenticate(key)
    user.last_login = None
    user.save(update_fields=["last_login"])  # what django.contrib.auth's login saves
    assert tokens.get(key) is not None
    with CaptureQueriesContext(connection) as queries, pytest.raises(AuthenticationFailed):
        tokens.authenticate("x" * 41)  # longer than any token key
    assert queries.captured_queries == []


# --- revocation across processes ---------------------------------------------------------------------


def get(web: WebServer, key: str) -> int:
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(
            f"GET {THREADS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {key}\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
    return int(data.split(b" ", 2)[1])


@contextlib.contextmanager
def two_servers(tmp_path: Path) -> Iterator[tuple[WebServer, WebServer]]:
    env = {"AWAKEN_AUTH_CACHE_TTL_MS": "600000"}  # so that only a revocation can end a cached token
    with asgi_server(tmp_path, env=env) as one, asgi_server(tmp_path, env=env) as two:
        yield one, two
        logs = one.log_tail() + two.log_tail()
    assert "Traceback" not in logs, logs


def warm(servers: tuple[WebServer, ...], key: str) -> None:
    """`key` answered, and (the listener subscribed) so cached, in every server."""
    for web in servers:
        assert get(web, key) == 200
    wait_until(lambda: subscribers() >= len(servers), what="every server subscribed")
    for web in servers:
        assert get(web, key) == 200


def subscribers() -> int:
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        return int(dict(client.pubsub_numsub(revocation.CHANNEL))[revocation.CHANNEL.encode()])
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_revocation_takes_effect_at_once_in_other_server_processes(tmp_path: Path) -> None:
    user = new_user("everywhere")
    with two_servers(tmp_path) as servers:
        # a token deleted without a signal (raw SQL) stays valid where it is cached: the servers do cache
        ghost = Token.objects.create(user=user)
        warm(servers, ghost.key)
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM authtoken_token WHERE key = %s", [ghost.key])
        assert [get(web, ghost.key) for web in servers] == [200, 200]
        # a token deleted through the ORM is refused by both at once (no wait between the two)
        # (Django's delete() sets the instance's primary key, here the key, to None: keep it first)
        token = Token.objects.create(user=user)
        key = token.key
        warm(servers, key)
        token.delete()
        assert [get(web, key) for web in servers] == [401, 401]
        # rotated: the old key refused at once, the new one accepted
        old = Token.objects.create(user=user)
        old_key = old.key
        warm(servers, old_key)
        old.delete()
        new = Token.objects.create(user=user)
        assert [get(web, old_key) for web in servers] == [401, 401]
        assert [get(web, new.key) for web in servers] == [200, 200]
        # a deactivated user's tokens are refused at once
        user.is_active = False
        user.save()
        assert [get(web, new.key) for web in servers] == [401, 401]
        assert [get(web, ghost.key) for web in servers] == [401, 401]  # (the user's every token)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_server_that_lost_its_subscription_forgets_what_it_cached(tmp_path: Path) -> None:
    user = new_user("gap")
    with two_servers(tmp_path) as servers:
        token = Token.objects.create(user=user)
        warm(servers, token.key)
        # when every subscription is cut and the token goes without a message anyone could hear
        killer = redis.Redis.from_url(django_settings.REDIS_URL)
        try:
            assert killer.client_kill_filter(_type="pubsub") >= 2
        finally:
            killer.close()
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM authtoken_token WHERE key = %s", [token.key])
        # then, subscribed again, no server still accepts it: what was cached before the gap is gone
        wait_until(lambda: subscribers() >= 2, timeout=10, what="the servers subscribed again")
        wait_until(
            lambda: [get(web, token.key) for web in servers] == [401, 401],
            timeout=revocation.STALE_AFTER_S + 2,
            what="the cached token dropped",
        )


def test_a_revocation_message_round_trips() -> None:
    message = revocation.as_revocation(keys=["k1"], user_ids=[7])
    assert revocation.Revocation.decode(message.encode()) == message
    assert json.loads(message.encode())["users"] == [7]
