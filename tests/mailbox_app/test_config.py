"""Pure tests (no database) of the dispatch and run state machines, the backoff math and the config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailbox_app.config import ConfigError, MailboxConfig
from mailbox_app.contract.lifecycle import RUN_TRANSITIONS, RunStatus, can_run_transition
from mailbox_app.contract.mailbox import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    DispatchStatus,
    can_transition,
)
from mailbox_app.retry import blocked_signal_delay_ms, nack_backoff_ms

PROJECT_ROOT = Path(__file__).resolve().parents[2]

Q = DispatchStatus.QUEUED
C = DispatchStatus.CLAIMED
A = DispatchStatus.ACKED
X = DispatchStatus.CANCELLED
S = DispatchStatus.SUPERSEDED
D = DispatchStatus.DEAD_LETTER

# --- dispatch state machine (contract §2.1) ---------------------------------------------------

# Every (from, to) pair the transition table T1..T13 of contract §2.1 allows, plus the operator's requeue
# of a dead letter; anything else is forbidden. T14 (purge) deletes a row and is not a status transition.
EXPECTED_DISPATCH_TRANSITIONS: dict[tuple[DispatchStatus, DispatchStatus], str] = {
    (Q, C): "T2 claim / T3 claim_dispatch",
    (Q, S): "T4 interrupt / T5 stale epoch at claim time",
    (Q, X): "T6 cancel",
    (C, A): "T7 ack",
    (C, Q): "T8 nack with attempts left / T10 lease reclaim with attempts left",
    (C, D): "T9 nack exhausted or dead_letter / T10 lease reclaim exhausted",
    (C, S): "T11 stale epoch on a claimed op / T12 stale reclaim / T13 supersede_claimed",
    (D, Q): "operator requeue (admin action, manage.py mailbox_requeue)",
}

ALL_DISPATCH_STATUSES = [Q, C, A, X, S, D]
DISPATCH_PAIRS = [(src, dst) for src in ALL_DISPATCH_STATUSES for dst in ALL_DISPATCH_STATUSES]


def test_dispatch_statuses_are_the_six_lowercase_values() -> None:
    """The six statuses of contract §1.2, spelled in lowercase as the database stores them."""
    assert {s.value for s in DispatchStatus} == {
        "queued",
        "claimed",
        "acked",
        "cancelled",
        "superseded",
        "dead_letter",
    }
    assert len(DISPATCH_PAIRS) == 36


@pytest.mark.parametrize(("source", "target"), DISPATCH_PAIRS, ids=lambda s: s.value)
def test_dispatch_transition_matrix(source: DispatchStatus, target: DispatchStatus) -> None:
    """Each of the 36 (from, to) pairs is allowed exactly when the contract's table lists it."""
    expected = (source, target) in EXPECTED_DISPATCH_TRANSITIONS
    assert can_transition(source, target) is expected, (
        f"{source.value} -> {target.value} should be {'allowed' if expected else 'forbidden'}"
    )
    assert (target in ALLOWED_TRANSITIONS[source]) is expected


def test_allowed_transitions_cover_every_status() -> None:
    """The transition map has a row for every status, so no status silently falls through."""
    assert set(ALLOWED_TRANSITIONS) == set(DispatchStatus)


def test_no_dispatch_status_transitions_to_itself() -> None:
    """Non-transition writes (extend_lease, record_*) keep a dispatch Claimed; none is a self-loop."""
    for status in DispatchStatus:
        assert not can_transition(status, status)


def test_terminal_dispatch_statuses() -> None:
    """Acked, Cancelled, Superseded and DeadLetter are terminal; Queued and Claimed are not (§1.2)."""
    assert {A, X, S, D} == TERMINAL_STATUSES
    for status in DispatchStatus:
        assert status.is_terminal is (status in {A, X, S, D})


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES - {D}), ids=lambda s: s.value)
def test_terminal_dispatch_statuses_never_transition(status: DispatchStatus) -> None:
    """A terminal dispatch never changes status again (only purge deletes it)..."""
    assert ALLOWED_TRANSITIONS[status] == frozenset()
    for target in DispatchStatus:
        assert not can_transition(status, target)


def test_a_dead_letter_leaves_only_by_an_operator_requeue() -> None:
    """...except a dead letter, which an operator may requeue, and only to Queued."""
    assert ALLOWED_TRANSITIONS[D] == frozenset({Q})
    assert {src for src in DispatchStatus if can_transition(src, Q)} == {C, D}


def test_only_claimed_dispatches_reach_acked_or_dead_letter() -> None:
    """Acked and DeadLetter are entered only from Claimed; Cancelled only from Queued."""
    assert {src for src in DispatchStatus if can_transition(src, A)} == {C}
    assert {src for src in DispatchStatus if can_transition(src, D)} == {C}
    assert {src for src in DispatchStatus if can_transition(src, X)} == {Q}
    assert {src for src in DispatchStatus if can_transition(src, S)} == {Q, C}


# --- run status (contract §1.8) ---------------------------------------------------------------

CR = RunStatus.CREATED
RU = RunStatus.RUNNING
WA = RunStatus.WAITING
DO = RunStatus.DONE

# same -> same; Created -> Running | Done; Running -> Waiting | Done; Waiting -> Running | Done;
# Done -> nothing else.
EXPECTED_RUN_TRANSITIONS: set[tuple[RunStatus, RunStatus]] = {
    (CR, CR),
    (CR, RU),
    (CR, DO),
    (RU, RU),
    (RU, WA),
    (RU, DO),
    (WA, WA),
    (WA, RU),
    (WA, DO),
    (DO, DO),
}

RUN_PAIRS = [(src, dst) for src in RunStatus for dst in RunStatus]


def test_run_statuses_are_the_four_snake_case_values() -> None:
    assert [s.value for s in RunStatus] == ["created", "running", "waiting", "done"]
    assert len(RUN_PAIRS) == 16


@pytest.mark.parametrize(("source", "target"), RUN_PAIRS, ids=lambda s: s.value)
def test_run_transition_matrix(source: RunStatus, target: RunStatus) -> None:
    """Each of the 16 run-status pairs is allowed exactly when contract §1.8 allows it."""
    expected = (source, target) in EXPECTED_RUN_TRANSITIONS
    assert can_run_transition(source, target) is expected, (
        f"{source.value} -> {target.value} should be {'allowed' if expected else 'forbidden'}"
    )
    assert (target in RUN_TRANSITIONS[source]) is expected


def test_run_status_terminal_is_done_only() -> None:
    """`is_terminal` holds for Done only; Done reaches nothing but itself, and never goes back to Created."""
    assert [s for s in RunStatus if s.is_terminal] == [DO]
    assert {t for t in RunStatus if can_run_transition(DO, t)} == {DO}
    assert {s for s in RunStatus if can_run_transition(s, CR)} == {CR}


# --- nack backoff (reference mailbox.rs) ------------------------------------------------------


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


# --- MailboxConfig ----------------------------------------------------------------------------


def test_mailbox_config_defaults() -> None:
    """Defaults equal the reference's `MailboxConfig::default()`; an empty environment yields them.

    seed: mailbox_config_defaults
    """
    config = MailboxConfig()
    assert config.lease_ms == 30_000
    assert config.suspended_lease_ms == 600_000
    assert config.lease_renewal_interval_ms == 10_000
    assert config.sweep_interval_ms == 30_000
    assert config.gc_interval_ms == 60_000
    assert config.gc_ttl_ms == 24 * 60 * 60 * 1000
    assert config.default_max_attempts == 5
    assert config.default_retry_delay_ms == 250
    assert config.max_retry_delay_ms == 30_000

    assert MailboxConfig.from_env({}) == config
    # blank values and unrelated variables fall back to the defaults too
    assert MailboxConfig.from_env({"AWAKEN_MAILBOX_LEASE_MS": "  ", "OTHER": "x"}) == config


def test_mailbox_config_custom_values() -> None:
    """Every field can be set, directly or through its `AWAKEN_MAILBOX_*` variable.

    seed: mailbox_config_custom_values
    """
    config = MailboxConfig(
        lease_ms=5_000,
        suspended_lease_ms=60_000,
        lease_renewal_interval_ms=2_000,
        sweep_interval_ms=5_000,
        gc_interval_ms=10_000,
        gc_ttl_ms=3_600_000,
        default_max_attempts=3,
        default_retry_delay_ms=500,
        max_retry_delay_ms=60_000,
    )
    assert config.lease_ms == 5_000
    assert config.default_max_attempts == 3
    assert config.default_retry_delay_ms == 500
    assert config.max_retry_delay_ms == 60_000

    from_env = MailboxConfig.from_env(
        {
            "AWAKEN_MAILBOX_LEASE_MS": "5000",
            "AWAKEN_MAILBOX_SUSPENDED_LEASE_MS": "60000",
            "AWAKEN_MAILBOX_LEASE_RENEWAL_INTERVAL_MS": "2000",
            "AWAKEN_MAILBOX_SWEEP_INTERVAL_MS": "5000",
            "AWAKEN_MAILBOX_GC_INTERVAL_MS": "10000",
            "AWAKEN_MAILBOX_GC_TTL_MS": "3600000",
            "AWAKEN_MAILBOX_DEFAULT_MAX_ATTEMPTS": "3",
            "AWAKEN_MAILBOX_DEFAULT_RETRY_DELAY_MS": "500",
            "AWAKEN_MAILBOX_MAX_RETRY_DELAY_MS": "60000",
        }
    )
    assert from_env == config


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AWAKEN_MAILBOX_LEASE_MS", "-1"),
        ("AWAKEN_MAILBOX_SWEEP_INTERVAL_MS", "-30000"),
        ("AWAKEN_MAILBOX_DEFAULT_MAX_ATTEMPTS", "0"),
    ],
)
def test_mailbox_config_rejects_negative_or_zero(variable: str, value: str) -> None:
    """A negative (or zero where at least one is needed) value raises ConfigError naming the variable."""
    with pytest.raises(ConfigError) as excinfo:
        MailboxConfig.from_env({variable: value})
    assert variable in str(excinfo.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AWAKEN_MAILBOX_LEASE_MS", "abc"),
        ("AWAKEN_MAILBOX_GC_TTL_MS", "1e3x"),
        ("AWAKEN_MAILBOX_DEFAULT_MAX_ATTEMPTS", "five"),
    ],
)
def test_mailbox_config_rejects_non_numbers(variable: str, value: str) -> None:
    """A value that is not an integer raises ConfigError naming the variable."""
    with pytest.raises(ConfigError) as excinfo:
        MailboxConfig.from_env({variable: value})
    assert variable in str(excinfo.value)


@pytest.mark.parametrize(
    "environ",
    [
        {"AWAKEN_MAILBOX_LEASE_RENEWAL_INTERVAL_MS": "30000"},  # equal to the default lease
        {"AWAKEN_MAILBOX_LEASE_MS": "5000", "AWAKEN_MAILBOX_LEASE_RENEWAL_INTERVAL_MS": "6000"},
        {"AWAKEN_MAILBOX_LEASE_MS": "9000"},  # shorter than the default 10 s renewal interval
    ],
)
def test_mailbox_config_rejects_renewal_not_shorter_than_lease(environ: dict[str, str]) -> None:
    """A renewal interval >= the lease would let the lease lapse between renewals: ConfigError."""
    with pytest.raises(ConfigError) as excinfo:
        MailboxConfig.from_env(environ)
    assert "AWAKEN_MAILBOX_LEASE_RENEWAL_INTERVAL_MS" in str(excinfo.value)
    assert "AWAKEN_MAILBOX_LEASE_MS" in str(excinfo.value)


def test_mailbox_config_accepts_renewal_just_below_lease() -> None:
    """The boundary: renewal one millisecond shorter than the lease is valid."""
    config = MailboxConfig.from_env(
        {"AWAKEN_MAILBOX_LEASE_MS": "5000", "AWAKEN_MAILBOX_LEASE_RENEWAL_INTERVAL_MS": "4999"}
    )
    assert (config.lease_ms, config.lease_renewal_interval_ms) == (5000, 4999)


def test_manage_py_check_fails_fast_on_bad_mailbox_variable() -> None:
    """Start-up (`manage.py check`) exits non-zero and names the bad variable on stderr."""
    env = dict(os.environ)
    env["AWAKEN_MAILBOX_LEASE_MS"] = "abc"
    completed = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode != 0
    assert "AWAKEN_MAILBOX_LEASE_MS" in completed.stderr
    assert "Traceback" not in completed.stderr
