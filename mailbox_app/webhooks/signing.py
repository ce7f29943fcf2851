"""Webhook signatures, the Standard Webhooks scheme (https://www.standardwebhooks.com): what a delivery
carries and what a receiver checks.

Every signed delivery has `webhook-id` (the delivery id, the same on every attempt: deduplicate on it),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`: space-separated
`v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, one per secret that signs it (the
subscriber's current secret, and after a rotation the previous one until its grace ends). The timestamp
is signed, so a receiver that refuses stale timestamps (5 minutes, the scheme's tolerance) cannot be
replayed a captured delivery later. The key is the secret's bytes: `whsec_<base64>` decoded, which is
what every Standard Webhooks library does with a `whsec_` secret.

The legacy `X-Awaken-Signature: sha256=<hex HMAC-SHA256 of the body>` (no timestamp, so replayable) is
kept only on deliveries to the project's own AWAKEN_WEBHOOK_URL, keyed with AWAKEN_WEBHOOK_SECRET as
before; `outbox.signature` / `outbox.verify` compute it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
VERSION = "v1"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
TOLERANCE_S = 300


def new_secret() -> str:
    """A fresh secret: `whsec_` and 32 random bytes in base64 (the form Standard Webhooks libraries take)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def key_of(secret: str) -> bytes:
    """The HMAC key of a secret: a `whsec_<base64>` secret's decoded bytes; any other text (a project's
    AWAKEN_WEBHOOK_SECRET chosen by hand) its UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{message_id}.{timestamp}.{body}">` keyed with `secret`."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key_of(secret), content, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode()}"


def headers(secrets_: Sequence[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, with one signature per secret (none: no signature header)."""
    out = {ID_HEADER: message_id, TIMESTAMP_HEADER: str(timestamp)}
    if secrets_:
        out[SIGNATURE_HEADER] = " ".join(sign(s, message_id, timestamp, body) for s in secrets_)
    return out


def verify(
    secret: str, received: Mapping[str, str], body: bytes, *, now_s: int, tolerance_s: int = TOLERANCE_S
) -> bool:
    """What a receiver does: the headers are there, the timestamp is within `tolerance_s` of `now_s`, and
    one of the `v1` signatures is the HMAC of this id, timestamp and body under `secret` (constant-time
    comparison)."""
    lowered = {name.lower(): value for name, value in received.items()}
    message_id = lowered.get(ID_HEADER)
    timestamp = lowered.get(TIMESTAMP_HEADER, "")
    signatures = lowered.get(SIGNATURE_HEADER)
    if not message_id or not signatures or not timestamp.isdigit():
        return False
    if abs(now_s - int(timestamp)) > tolerance_s:
        return False
    expected = sign(secret, message_id, int(timestamp), body)
    return any(
        hmac.compare_digest(expected.encode(), candidate.encode())
        for candidate in signatures.split(" ")
        if candidate.startswith(f"{VERSION},")
    )
