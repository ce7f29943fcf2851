"""MailboxConfig (mailbox_app/contract/config.py): defaults, AWAKEN_MAILBOX_* variables, and what it rejects
(also at
`manage.py check`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mailbox_app.contract.config import ConfigError, MailboxConfig
from tests.support.servers import PROJECT_ROOT


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
