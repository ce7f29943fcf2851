"""Webhook signing secrets, one per user (the owner of the runs whose webhooks they sign).

Per user, not per subscription: a subscription here is one run's `webhook` URL, so a secret per
subscription would be a new key per run that a receiver could not know in advance. A receiver is
configured once with its user's secret; no other user's key can produce a signature it accepts, and a
user can only sign for their own receivers, which gains them nothing.

Creation and rotation are one statement (an upsert on the user's row), so concurrent rotations
serialize on that row: each caller gets its own secret, the last one to commit is current and the one
before it stays valid (as the previous secret) for the grace the last caller asked for. The secret is
returned by `issue` only; `describe` and every other read leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection

from mailbox_app.contract.ids import now_ms
from mailbox_app.webhooks import signing

DEFAULT_GRACE_MS = 86_400_000  # the previous secret signs too, for a day, unless the rotation says less
MAX_GRACE_MS = 7 * 86_400_000

ISSUE = """
INSERT INTO mailbox_webhook_secret AS s (user_id, secret, previous_secret, previous_valid_until, created_at)
VALUES (%(user_id)s, %(secret)s, NULL, NULL, %(now)s)
ON CONFLICT (user_id) DO UPDATE
   SET previous_secret = CASE WHEN %(grace_until)s > %(now)s THEN s.secret END,
       previous_valid_until = CASE WHEN %(grace_until)s > %(now)s THEN %(grace_until)s::bigint END,
       secret = EXCLUDED.secret,
       created_at = EXCLUDED.created_at
RETURNING created_at, previous_valid_until
"""

SECRETS_OF = """
SELECT secret, previous_secret, previous_valid_until, created_at
  FROM mailbox_webhook_secret
 WHERE user_id = %(user_id)s
"""


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown about a user's secret after its creation: never the secret."""

    created_at: int
    previous_valid_until: int | None  # the previous secret still signs until then (None: it does not)


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    secret: str
    info: SecretInfo


def issue(user_id: int, *, grace_ms: int = DEFAULT_GRACE_MS, now: int | None = None) -> IssuedSecret:
    """A new secret for `user_id`: the first one, or a rotation that keeps the current secret signing
    beside the new one for `grace_ms` (0: revoked at once, for a leaked secret)."""
    if not 0 <= grace_ms <= MAX_GRACE_MS:
        raise ValueError(f"grace_ms must be within 0..{MAX_GRACE_MS}")
    stamp = now_ms() if now is None else now
    secret = signing.new_secret()
    params: dict[str, Any] = {
        "user_id": user_id,
        "secret": secret,
        "now": stamp,
        "grace_until": stamp + grace_ms,
    }
    with connection.cursor() as cursor:
        cursor.execute(ISSUE, params)
        created_at, previous_valid_until = cursor.fetchone()  # type: ignore[misc]
    info = SecretInfo(int(created_at), None if previous_valid_until is None else int(previous_valid_until))
    return IssuedSecret(secret, info)


def _row(user_id: int) -> tuple[str, str | None, int | None, int] | None:
    with connection.cursor() as cursor:
        cursor.execute(SECRETS_OF, {"user_id": user_id})
        row = cursor.fetchone()
    if row is None:
        return None
    secret, previous, previous_valid_until, created_at = row
    return str(secret), previous, previous_valid_until, int(created_at)


def describe(user_id: int, *, now: int | None = None) -> SecretInfo | None:
    """When `user_id`'s secret was made and until when the previous one signs; None without a secret."""
    row = _row(user_id)
    if row is None:
        return None
    _, _, previous_valid_until, created_at = row
    stamp = now_ms() if now is None else now
    in_grace = previous_valid_until is not None and previous_valid_until > stamp
    return SecretInfo(created_at, int(previous_valid_until) if in_grace else None)  # type: ignore[arg-type]


def has_secret(user_id: int) -> bool:
    return _row(user_id) is not None


def signing_secrets(user_id: int, *, now: int) -> list[str]:
    """The secrets that sign a delivery to `user_id`'s receivers now: the current one, then the previous
    one while its grace lasts. Empty when the user has none."""
    row = _row(user_id)
    if row is None:
        return []
    secret, previous, previous_valid_until, _ = row
    if previous and previous_valid_until is not None and previous_valid_until > now:
        return [secret, previous]
    return [secret]
