"""Nack backoff and the blocked dispatch-signal delay (mailbox_app/contract/retry.py), as in the reference
`mailbox.rs`."""

from __future__ import annotations

import pytest

from mailbox_app.contract.config import MailboxConfig
from mailbox_app.contract.retry import blocked_signal_delay_ms, nack_backoff_ms


def _config_backoff(config: MailboxConfig, attempt_count: int) -> int:
    return nack_backoff_ms(
        attempt_count, base_ms=config.default_retry_delay_ms, max_ms=config.max_retry_delay_ms
    )


@pytest.mark.parametrize(
    ("attempt_count", "expected_ms"),
    [(1, 250), (2, 500), (3, 1000), (4, 2000), (5, 4000), (6, 8000), (7, 16000)],
)
def test_nack_backoff_progression(attempt_count: int, expected_ms: int) -> None:
    """Pre-nack attempt n gives 250 * 2^min(n-1, 6) ms with the default config.

    seed: nack_backoff_progression
    """
    config = MailboxConfig()
    assert _config_backoff(config, attempt_count) == expected_ms
    assert nack_backoff_ms(attempt_count) == expected_ms


def test_nack_backoff_caps_at_max() -> None:
    """Base 1000 ms, max 5000 ms: attempt 4 would be 8000 ms and is capped at 5000 ms.

    seed: nack_backoff_caps_at_max
    """
    config = MailboxConfig(max_retry_delay_ms=5000, default_retry_delay_ms=1000)
    assert _config_backoff(config, 4) == 5000
    # one step below the cap is not capped
    assert _config_backoff(config, 3) == 4000


def test_nack_backoff_zero_attempt_is_base_delay() -> None:
    """Attempt count 0 (first failure of a never-failed dispatch) gives the base delay, 250 ms.

    seed: nack_backoff_zero_attempt_is_base_delay
    """
    config = MailboxConfig()
    assert _config_backoff(config, 0) == 250
    assert _config_backoff(config, 0) == _config_backoff(config, 1)


def test_nack_backoff_high_attempt_stays_capped() -> None:
    """The exponent stops at 6: attempt 100 gives 250 * 64 = 16 000 ms, or the max if that is lower.

    seed: nack_backoff_high_attempt_stays_capped
    """
    config = MailboxConfig()
    assert _config_backoff(config, 100) == 16_000

    config2 = MailboxConfig(max_retry_delay_ms=10_000)
    assert _config_backoff(config2, 100) == 10_000


def test_dispatch_signal_blocked_nack_delay_backs_off_and_caps() -> None:
    """Blocked-signal redelivery delay: none -> 500 ms, 3 deliveries -> 2000 ms, 100 -> capped 30 000 ms.

    seed: dispatch_signal_blocked_nack_delay_backs_off_and_caps
    """
    assert blocked_signal_delay_ms(None) == 500
    assert blocked_signal_delay_ms(3) == 2000
    assert blocked_signal_delay_ms(100) == 30_000
    # first delivery is the base delay; the second doubles it
    assert blocked_signal_delay_ms(1) == 500
    assert blocked_signal_delay_ms(2) == 1000
