"""Idempotent submissions: a retried request with the same key returns the first answer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction

from mailbox_app.ids import now_ms
from runs_app.api.errors import ApiError
from runs_app.models import IdempotencyRecord

Outcome = tuple[int, dict[str, Any]]


def request_hash(path: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps({"path": path, "body": payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_once(*, user_id: int, key: str | None, fingerprint: str, action: Callable[[], Outcome]) -> Outcome:
    """Without a key: just run `action`. With one: run it at most once per (user, key)."""
    if not key:
        return action()
    try:
        with transaction.atomic():
            record = IdempotencyRecord.objects.create(
                user_id=user_id, key=key, request_hash=fingerprint, created_at=now_ms()
            )
    except IntegrityError:
        existing = IdempotencyRecord.objects.get(user_id=user_id, key=key)
        if existing.request_hash != fingerprint:
            raise ApiError(
                "idempotency key was already used with a different request",
                code="idempotency_key_reused",
                status_code=409,
                field="idempotency_key",
            ) from None
        if existing.status_code is None:
            raise ApiError(
                "a request with this idempotency key is still in progress",
                code="idempotency_in_progress",
                status_code=409,
            ) from None
        return existing.status_code, dict(existing.response or {})
    try:
        status_code, data = action()
    except Exception:
        record.delete()  # the request failed: a retry may try again
        raise
    IdempotencyRecord.objects.filter(pk=record.pk).update(status_code=status_code, response=data)
    return status_code, data
