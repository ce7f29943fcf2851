"""Every variable the project reads (awaken_project/environment.py): a bad value stops start-up with ONE
line naming the variable and the form it accepts, no traceback, for `manage.py check` as for the servers;
every accepted form parses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from awaken_project.environment import ConfigurationErrors, Environment, load

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "awaken-mailbox configuration error: "

# a bad value for every variable that has a form to break (free text has none)
BAD: dict[str, str] = {
    "DEBUG": "maybe",
    "ALLOWED_HOSTS": "https://api.example.com/",
    "LOG_LEVEL": "LOUD",
    "LOG_FORMAT": "xml",
    "PORT": "70000",
    "WEB_CONCURRENCY": "0",
    "CELERY_CONCURRENCY": "two",
    "SESSION_COOKIE_SECURE": "sure",
    "CSRF_COOKIE_SECURE": "2",
    "SECURE_SSL_REDIRECT": "https",
    "SECURE_HSTS_SECONDS": "-1",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "all",
    "SECURE_HSTS_PRELOAD": "please",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
    "CSRF_TRUSTED_ORIGINS": "api.example.com",
    "DATABASE_URL": "mysql://user:hunter2@db/awaken",
    "DB_CONN_MAX_AGE": "forever",
    "DB_POOL_MAX_SIZE": "-2",
    "DB_SERVER_SIDE_BINDING": "maybe",
    "DB_IDLE_TX_TIMEOUT_MS": "1.5",
    "REDIS_URL": "notaurl",
    "CELERY_BROKER_URL": "kafkaa://broker",
    "CELERY_VISIBILITY_TIMEOUT_S": "0",
    "CELERY_DB_REUSE_MAX": "-1",
    "AWAKEN_RUN_STORE": "runs_app..store",
    "AWAKEN_AGENTS": '{"echo2": 3}',
    "AWAKEN_LIVE_ACK_TIMEOUT_MS": "0",
    "AWAKEN_LIVE_SUSPEND_HOLD_MS": "-1",
    "AWAKEN_REMOTE_CANCEL_WAIT_MS": "soon",
    "AWAKEN_SSE_KEEPALIVE_MS": "99",
    "AWAKEN_EVENTS_MAX_PER_RUN": "0",
    "AWAKEN_EVENTS_TTL_MS": "999",
    "AWAKEN_BODY_READ_TIMEOUT_MS": "0",
    "AWAKEN_BODY_BUFFER_MAX_BYTES": "1023",
    "AWAKEN_AUTH_CACHE_TTL_MS": "-1",
    "AWAKEN_AUTH_CACHE_MAX_ENTRIES": "none",
    "AWAKEN_DOORBELL_MAX_COUNTDOWN_MS": "0",
    "AWAKEN_WEB_MAX_CONCURRENT_VIEWS": "0",
    "AWAKEN_IDEMPOTENCY_TTL_MS": "0",
    "AWAKEN_THREAD_TTL_MS": "-1",
    "AWAKEN_GC_MAX_PER_TICK": "0",
    "AWAKEN_RUN_TIMEOUT_MS": "-1",
    "AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS": "0",
    "AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS": "x",
    "AWAKEN_STARTUP_RECOVERY_MAX_ATTEMPTS": "0",
    "AWAKEN_STARTUP_RECOVERY_RETRY_DELAY_MS": "-5",
    "AWAKEN_WEBHOOK_URL": "ftp://hooks.example.com/x",
    "AWAKEN_WEBHOOK_ALLOW_PRIVATE": "perhaps",
    "AWAKEN_WEBHOOK_MAX_ATTEMPTS": "0",
    "AWAKEN_WEBHOOK_RETRY_DELAY_MS": "0",
    "AWAKEN_WEBHOOK_MAX_RETRY_DELAY_MS": "-1",
    "AWAKEN_WEBHOOK_TIMEOUT_MS": "10",
    "AWAKEN_METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,office",
    "AWAKEN_TOKEN_BUDGETS": '{"owner": {"tokens": -5}}',
    "AWAKEN_API_THROTTLE_RATE": "lots",
    "AWAKEN_API_ANON_THROTTLE_RATE": "10/fortnight",
    "AWAKEN_API_NUM_PROXIES": "-1",
    "AWAKEN_API_MAX_BODY_BYTES": "100",
    "AWAKEN_ADMIN_LOGIN_MAX_FAILURES": "0",
    "AWAKEN_ADMIN_LOGIN_LOCKOUT_S": "0",
    "OTEL_TRACES_EXPORTER": "jaeger",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "grpc://collector:4317",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    # the apps' own models (mailbox_app/contract/config.py) report through the same lines
    "AWAKEN_MAILBOX_LEASE_MS": "long",
    "AWAKEN_FAIRNESS": "fifo",
    "AWAKEN_AGENT_LIMITS": "{not json",
    "AWAKEN_INBOX_DEFAULT": '{"debounce_ms": 500, "max_wait_ms": 100}',
    "AWAKEN_INBOX_AGENT_DEFAULTS": '{"support": {"while_running": "later"}}',
}
FREE_TEXT = {
    "SECRET_KEY", "STATIC_ROOT", "AWAKEN_FAULT_POINT", "AWAKEN_WEBHOOK_SECRET", "AWAKEN_METRICS_TOKEN",
    "AWAKEN_METRICS_DIR", "OTEL_SERVICE_NAME",
}  # fmt: skip
# the examples (#21 item 5), through `manage.py check` in a fresh process
OBSERVED = [
    {"DEBUG": "maybe"},
    {"AWAKEN_RUN_TIMEOUT_MS": "-1"},
    {"DATABASE_URL": "mysql://user:hunter2@db/awaken"},
    {"LOG_LEVEL": "LOUD"},
    {"DEBUG": "0"},  # without SECRET_KEY
    {"AWAKEN_API_THROTTLE_RATE": "lots"},
    {"REDIS_URL": "notaurl"},
    {"AWAKEN_MAILBOX_LEASE_MS": "long"},
    {"SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https"},
]


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """pydantic-settings reads os.environ: only what a test sets."""
    for name in list(os.environ):
        if name in Environment.model_fields or name.startswith("AWAKEN_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_every_variable_with_a_form_has_a_bad_case() -> None:
    assert set(Environment.model_fields) - FREE_TEXT <= set(BAD)
    assert set(Environment.model_fields) >= FREE_TEXT


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_variable_is_one_line_naming_it(clean_environ: pytest.MonkeyPatch, name: str) -> None:
    clean_environ.setenv(name, BAD[name])
    with pytest.raises(ConfigurationErrors) as caught:
        load(os.environ)
    (line,) = caught.value.lines
    assert line.startswith(name), line
    assert "\n" not in line
    if name in Environment.model_fields:
        assert "expected" in line  # the accepted form
    assert "hunter2" not in line  # a URL's password is never echoed


def test_every_bad_variable_is_reported_at_once(clean_environ: pytest.MonkeyPatch) -> None:
    # (the claim policy's model reports its first bad variable: one of its two here)
    bad = {name: value for name, value in BAD.items() if name != "AWAKEN_AGENT_LIMITS"}
    for name, value in bad.items():
        clean_environ.setenv(name, value)
    with pytest.raises(ConfigurationErrors) as caught:
        load(os.environ)
    named = {re.match(r"[A-Z_]+", line).group(0) for line in caught.value.lines}
    assert named == set(bad)


def test_the_accepted_forms_parse(clean_environ: pytest.MonkeyPatch) -> None:
    good = {
        "DEBUG": "On",
        "ALLOWED_HOSTS": " api.example.com, .example.org ",
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "JSON",
        "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
        "CSRF_TRUSTED_ORIGINS": "https://api.example.com,https://*.example.org",
        "DATABASE_URL": "postgres://u:p@db:5432/awaken",
        "REDIS_URL": "rediss://:pw@cache:6380/2",
        "CELERY_BROKER_URL": "amqp://guest@rabbit//",
        "AWAKEN_AGENTS": '{"mine": "pkg.agents.Mine"}',
        "AWAKEN_API_THROTTLE_RATE": "100/s",
        "AWAKEN_API_ANON_THROTTLE_RATE": "20/hour",
        "AWAKEN_WEBHOOK_URL": "https://hooks.example.com/awaken",
        "DB_POOL_MAX_SIZE": "",  # empty means unset
    }
    for name, value in good.items():
        clean_environ.setenv(name, value)
    env = load(os.environ).env
    assert env.DEBUG is True and env.LOG_LEVEL == "WARNING" and env.LOG_FORMAT == "json"
    assert env.ALLOWED_HOSTS == ("api.example.com", ".example.org")
    assert env.SECURE_PROXY_SSL_HEADER == ("HTTP_X_FORWARDED_PROTO", "https")
    assert env.AWAKEN_AGENTS == {"mine": "pkg.agents.Mine"}
    assert env.broker_url == "amqp://guest@rabbit//" and env.DB_POOL_MAX_SIZE == 0


def test_defaults_need_no_environment(clean_environ: pytest.MonkeyPatch) -> None:
    env = load(os.environ).env
    assert env.broker_url == env.REDIS_URL == "redis://127.0.0.1:6379/0"
    assert env.AWAKEN_API_THROTTLE_RATE == "6000/minute" and env.AWAKEN_API_NUM_PROXIES == 0


def _check(env: dict[str, str]) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}}
    return subprocess.Popen(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=base | env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_manage_py_check_stops_with_one_line_for_each_observed_mistake() -> None:
    running = [(env, _check(env)) for env in OBSERVED]  # two cores: they overlap their start-up
    for env, proc in running:
        out, err = proc.communicate(timeout=180)
        name = "SECRET_KEY" if env == {"DEBUG": "0"} else next(iter(env))
        assert proc.returncode == 2, (env, out, err)
        assert "Traceback" not in err, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(PREFIX + name), (env, err)


def test_an_empty_metrics_networks_means_the_bearer_token_only(clean_environ: pytest.MonkeyPatch) -> None:
    """The one variable whose empty value is not "unset": no network may scrape without the token."""
    clean_environ.setenv("AWAKEN_METRICS_ALLOWED_NETWORKS", "")
    assert load(os.environ).metrics_networks == ()
    clean_environ.delenv("AWAKEN_METRICS_ALLOWED_NETWORKS")
    assert len(load(os.environ).metrics_networks) == 2  # the default: loopback, IPv4 and IPv6
