"""The API's token authentication without a PostgreSQL query per request.

DRF's `TokenAuthentication` reads the token and its user on every request (8 % of a web worker's busy
time under load). `CachedTokenAuthentication` keeps token -> user in a per-process cache (bounded, LRU,
a short TTL: AWAKEN_AUTH_CACHE_TTL_MS, AWAKEN_AUTH_CACHE_MAX_ENTRIES); a hit costs no query and no
Redis round trip. Revocation is immediate in every process: deleting or changing a token, and saving or
deleting its user (deactivation), evicts it here at once and, once the transaction commits, in every
other process through runs_app/api/revocation.py, which returns only when every subscribed process has
evicted. A process that cannot be sure it heard every revocation (no subscription) uses no cache.

What the cache does not see: a bulk `QuerySet.update()` or raw SQL on tokens or users sends no signal;
such a change takes effect within the TTL. The ASGI edge (awaken_project/intake.py) validates tokens
through the same cache before it reads a request's body.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.base import ModelState
from django.db.models.signals import post_delete, post_save
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from mailbox_app.conf import awaken_settings
from runs_app.api.revocation import Revocation, RevocationListener, as_revocation, publish_and_wait

INVALID_TOKEN = "Invalid token."
INACTIVE_USER = "User inactive or deleted."
KEY_MAX_LENGTH = 40  # rest_framework.authtoken's Token.key


@dataclass(frozen=True, slots=True)
class _Entry:
    user: Any
    token: Token
    expires: float


class TokenCache:
    """token key -> (user, token), per process; trusted only while the revocation listener is."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every eviction: a lookup older than it must not fill the cache
        self.listener = RevocationListener(self.evict, self.clear)

    def get(self, key: str) -> tuple[Any, Token] | None:
        """The cached (user, token) of `key`, as copies; None on a miss (or while untrusted)."""
        if not self.listener.trusted():
            return None
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
        return _copies(entry)

    def authenticate(self, key: str) -> tuple[Any, Token]:
        """(user, token) for `key` from the cache, else from PostgreSQL (one query) into the cache.
        Raises `AuthenticationFailed` as DRF's `TokenAuthentication` does."""
        hit = self.get(key)
        if hit is not None:
            return hit
        if not key or len(key) > KEY_MAX_LENGTH:
            raise AuthenticationFailed(INVALID_TOKEN)  # no token has such a key: no query for it
        trusted = self.listener.ensure_running()
        generation = self._generation  # before the read: an eviction after it voids what is read
        try:
            token = Token.objects.select_related("user").get(key=key)
        except Token.DoesNotExist:
            raise AuthenticationFailed(INVALID_TOKEN) from None
        if not token.user.is_active:
            raise AuthenticationFailed(INACTIVE_USER)
        entry = _Entry(token.user, token, time.monotonic() + _ttl_s())
        if trusted and _ttl_s() > 0:
            with self._lock:
                if generation == self._generation and self.listener.trusted():
                    self._entries[key] = entry
                    self._entries.move_to_end(key)
                    while len(self._entries) > max(int(awaken_settings.AUTH_CACHE_MAX_ENTRIES), 1):
                        self._entries.popitem(last=False)
        return _copies(entry)

    def evict(self, revocation: Revocation) -> None:
        users = set(revocation.user_ids)
        with self._lock:
            self._generation += 1
            for key in revocation.keys:
                self._entries.pop(key, None)
            if users:
                for key in [k for k, e in self._entries.items() if e.user.pk in users]:
                    del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _ttl_s() -> float:
    return max(int(awaken_settings.AUTH_CACHE_TTL_MS), 0) / 1000


def _copies(entry: _Entry) -> tuple[Any, Token]:
    """Each request gets its own user and token objects: a view that sets an attribute on
    `request.user` must not change the one other requests (other threads) are using."""
    user = _clone(entry.user)
    token = _clone(entry.token)
    token.user = user
    return user, token


def _clone(instance: Any) -> Any:
    """A shallow copy of a model instance: its field values, a fresh state, no cached relations (a
    fraction of `copy.copy`'s cost, which pickles the state through `__reduce__`)."""
    clone = instance.__class__.__new__(instance.__class__)
    clone.__dict__.update(instance.__dict__)
    state = ModelState()
    state.db, state.adding = instance._state.db, False
    clone._state = state
    return clone


tokens = TokenCache()


class CachedTokenAuthentication(TokenAuthentication):
    """DRF's `Authorization: Token <key>` with the key looked up in `tokens` (same errors, same 401)."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        return tokens.authenticate(key)


def revoke(revocation: Revocation) -> None:
    """Evict now in this process; in every other one once the current transaction commits."""
    tokens.evict(revocation)
    transaction.on_commit(lambda: publish_and_wait(revocation), robust=True)


def _token_saved(sender: Any, instance: Token, created: bool = False, **kwargs: Any) -> None:
    if created:  # no process can hold a key that did not exist; only this one's stale leftovers
        tokens.evict(as_revocation(keys=[instance.key]))
        return
    revoke(as_revocation(keys=[instance.key]))  # its user changed


def _token_deleted(sender: Any, instance: Token, **kwargs: Any) -> None:
    revoke(as_revocation(keys=[instance.key]))


def _user_saved(
    sender: Any, instance: Any, created: bool = False, update_fields: Any = None, **kwargs: Any
) -> None:
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return  # a new user has no cached token; a login changes nothing a token depends on
    revoke(as_revocation(user_ids=[instance.pk]))


def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    revoke(as_revocation(user_ids=[instance.pk]))


def connect_revocation() -> None:
    """Connect the receivers that revoke cached tokens (runs_app/apps.py calls it in `ready`, so a
    management command or shell that deletes a token revokes it too)."""
    user_model = get_user_model()
    post_save.connect(_token_saved, sender=Token, dispatch_uid="awaken_token_saved")
    post_delete.connect(_token_deleted, sender=Token, dispatch_uid="awaken_token_deleted")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="awaken_token_user_saved")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="awaken_token_user_deleted")
