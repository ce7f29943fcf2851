"""Idempotent submissions: a retried request with the same key returns the first answer, exactly once.

The key row is written *with its answer* inside the transaction that commits the submission, so a key
exists if and only if the submission committed: there is no "in progress" row for a dead process to leave
behind, and a failure of the action rolls back the key with everything else. While a request holds a
key, a concurrent duplicate gets 409 (a session-level PostgreSQL advisory lock, released by the server
when the holder's connection ends, so a crashed process never leaves it taken); the unique index on
(user, key) is the backstop. When anything raises after the commit (an on-commit hook, the connection
dropping on the way back), the answer is resolved from what was committed: the stored row is returned,
never a 500. Keys expire after `AWAKEN_IDEMPOTENCY_TTL_MS`; `purge_expired` (run by the mailbox GC)
deletes them.

An action receives a `Recorder` and must call it inside its final transaction (`in_one_transaction`
wraps an action whose service opens its own transactions in an outer one, so they join it as
savepoints). Foreground `submit` records from inside its claim transaction instead: its interrupt runs
in a transaction of its own first (spec §7.2) and must not be undone by a later 409.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from django.db import connection, transaction

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms
from mailbox_app.services.mailbox import IdempotencyKey, Replayed
from runs_app.api.errors import ApiError
from runs_app.models import IdempotencyRecord

log = logging.getLogger(__name__)
Outcome = tuple[int, dict[str, Any]]
PURGE_BATCH = 10_000


class Recorder(Protocol):
    def __call__(self, status_code: int, data: dict[str, Any]) -> None: ...


Action = Callable[[Recorder], Outcome]


def request_hash(path: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps({"path": path, "body": payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _no_record(status_code: int, data: dict[str, Any]) -> None:
    return None


def in_one_transaction(action: Callable[[], Outcome]) -> Action:
    """An action whose effects and key row commit together: `action` runs inside an outer atomic block
    (the service's own atomic blocks become savepoints of it) and its answer is recorded before it ends."""

    def run(record: Recorder) -> Outcome:
        with transaction.atomic():
            status_code, data = action()
            record(status_code, data)
        return status_code, data

    return run


def run_once(*, user_id: int, key: str | None, fingerprint: str, action: Action) -> Outcome:
    """Without a key: just run `action`. With one: run it at most once per (user, key) within the TTL."""
    if not key:
        return action(_no_record)
    with _key_lock(user_id, key):
        answered = _answer(user_id, key, fingerprint)
        if answered is not None:
            return answered
        recorder = KeyRecorder(user_id, key, fingerprint)
        try:
            outcome = action(recorder)
        except Exception:
            # Rolled back (no key: a retry runs again), or raised after the commit (the key is there).
            committed = _committed_answer(user_id, key, fingerprint)
            if committed is None:
                raise
            log.warning("request with idempotency key failed after its commit; answering the stored reply")
            return committed
        if not recorder.written:  # an action that forgot to record: keep the answer, but say so
            log.error("idempotent action for key %r did not record its answer in its transaction", key)
            recorder(*outcome)
        return outcome


class KeyRecorder:
    """Records the answer of an idempotent action under its key, in the action's own transaction."""

    def __init__(self, user_id: int, key: str, fingerprint: str) -> None:
        self.user_id, self.key, self.fingerprint = user_id, key, fingerprint
        self.written = False

    def __call__(self, status_code: int, data: dict[str, Any]) -> None:
        """Insert the key row with its answer in the current transaction. An expired row of the same key
        is replaced; a live one (a duplicate that got past the lock) raises IntegrityError, rolling the
        whole submission back, and `run_once` replays the winner."""
        now = now_ms()
        with transaction.atomic():
            IdempotencyRecord.objects.filter(
                user_id=self.user_id, key=self.key, created_at__lt=_cutoff(now)
            ).delete()
            IdempotencyRecord.objects.create(
                user_id=self.user_id,
                key=self.key,
                request_hash=self.fingerprint,
                status_code=status_code,
                response=data,
                created_at=now,
            )
        self.written = True


def _cutoff(now: int) -> int:
    return now - int(awaken_settings.IDEMPOTENCY_TTL_MS)


def _answer(user_id: int, key: str, fingerprint: str) -> Outcome | None:
    """The stored answer of an unexpired key; 409 when the key was used for a different request."""
    record = IdempotencyRecord.objects.filter(
        user_id=user_id, key=key, created_at__gte=_cutoff(now_ms())
    ).first()
    if record is None:
        return None
    if record.request_hash != fingerprint:
        raise ApiError(
            "idempotency key was already used with a different request",
            code="idempotency_key_reused",
            status_code=409,
            field="idempotency_key",
        )
    return record.status_code, dict(record.response or {})


def _committed_answer(user_id: int, key: str, fingerprint: str) -> Outcome | None:
    try:
        return _answer(user_id, key, fingerprint)
    except ApiError:
        raise
    except Exception:  # the database itself is gone: the original error is the better report
        log.warning("could not read idempotency key %r after a failure", key, exc_info=True)
        return None


def key_lock_id(user_id: int, key: str) -> int:
    """The PostgreSQL advisory lock id of (user, key)."""
    digest = hashlib.sha256(f"awaken-idempotency:{user_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _key_lock(user_id: int, key: str) -> Iterator[None]:
    """Hold (user, key) for this request; 409 while another request holds it. Session-level, so it spans
    the foreground submit's separate transactions; PostgreSQL drops it if the connection dies."""
    lock_id = key_lock_id(user_id, key)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [lock_id])
        row = cursor.fetchone()
    if not (row and row[0]):
        raise ApiError(
            "a request with this idempotency key is still in progress; retry shortly",
            code="idempotency_in_progress",
            status_code=409,
            field="idempotency_key",
        )
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_id])
        except Exception:
            # Only a broken connection (its session, and the lock with it, is gone) or an aborted
            # transaction gets here; close the connection so the lock cannot outlive this request.
            log.warning("could not release the idempotency lock; closing the connection", exc_info=True)
            if not connection.in_atomic_block:
                connection.close()


def key_of(user_id: int, key: str, fingerprint: str, status_code: int) -> IdempotencyKey:
    """The key a submit the mailbox makes in one statement records (and replays) itself, under the same
    advisory lock id a request holds here (`key_lock_id`)."""
    return IdempotencyKey(
        user_id=user_id,
        key=key,
        fingerprint=fingerprint,
        status_code=status_code,
        not_before=_cutoff(now_ms()),
        lock_id=key_lock_id(user_id, key),
    )


def replayed(answer: Replayed) -> Outcome:
    """A key the one-statement submit found answered: its stored answer, or 409 for another request."""
    if not answer.same_request:
        raise ApiError(
            "idempotency key was already used with a different request",
            code="idempotency_key_reused",
            status_code=409,
            field="idempotency_key",
        )
    return answer.status_code, answer.response


def purge_expired(*, now: int | None = None) -> int:
    """Delete keys older than AWAKEN_IDEMPOTENCY_TTL_MS (in batches); returns how many went."""
    cutoff = _cutoff(now_ms() if now is None else now)
    purged = 0
    while True:
        ids = list(
            IdempotencyRecord.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:PURGE_BATCH]
        )
        if not ids:
            return purged
        purged += IdempotencyRecord.objects.filter(pk__in=ids).delete()[0]
        if len(ids) < PURGE_BATCH:
            return purged


def purge_on_gc(*, now: int, **_: Any) -> dict[str, int]:
    """The mailbox GC's `gc_ran` receiver: expired idempotency keys."""
    return {"idempotency_keys": purge_expired(now=now)}
