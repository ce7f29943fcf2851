"""Backoff math for nacked dispatches and blocked dispatch signals. Pure."""

from __future__ import annotations

NACK_BASE_DELAY_MS = 250
NACK_MAX_DELAY_MS = 30_000
NACK_MAX_EXPONENT = 6

SIGNAL_BLOCKED_BASE_DELAY_MS = 500
SIGNAL_BLOCKED_MAX_DELAY_MS = 30_000


def nack_backoff_ms(
    attempt_count: int,
    *,
    base_ms: int = NACK_BASE_DELAY_MS,
    max_ms: int = NACK_MAX_DELAY_MS,
) -> int:
    """Delay before a nacked dispatch becomes claimable again.

    `attempt_count` is the pre-nack count of the claimed snapshot: min(base * 2^min(max(n-1, 0), 6), max),
    so n = 0 and n = 1 both give the base delay (spec §7.4).
    """
    exponent = min(max(attempt_count - 1, 0), NACK_MAX_EXPONENT)
    return min(base_ms * (1 << exponent), max_ms)


def blocked_signal_delay_ms(
    deliveries: int | None,
    *,
    base_ms: int = SIGNAL_BLOCKED_BASE_DELAY_MS,
    max_ms: int = SIGNAL_BLOCKED_MAX_DELAY_MS,
) -> int:
    """Redelivery delay for a dispatch signal whose thread could not be claimed: base * 2^(n-1), capped."""
    attempt = max(deliveries or 1, 1)
    exponent = min(attempt - 1, 16)
    return min(base_ms * (1 << exponent), max_ms)
