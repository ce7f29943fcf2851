"""Every environment variable the project reads, parsed and checked once, by pydantic-settings.

`load()` returns the parsed `Environment` or raises `ConfigurationErrors`, whose lines each name one bad
variable, what it was (secrets hidden) and the form it accepts. awaken_project/settings.py prints those
lines and exits 2, so `manage.py check`, a worker or the web server stops at start-up with one line per
mistake instead of a traceback, or instead of answering 500 later. docs/operations.md lists them all.

An empty variable counts as unset (its default applies), except `AWAKEN_METRICS_ALLOWED_NETWORKS`,
where empty means no network (the bearer token only). Booleans accept 1/0, true/false, yes/no,
on/off (any case). The mailbox and claim-policy variables (`AWAKEN_MAILBOX_*`, `AWAKEN_FAIRNESS`, …)
are parsed by the apps' own models (mailbox_app/contract/config.py); their errors join the others here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from kombu.transport import TRANSPORT_ALIASES
from pydantic import BeforeValidator, Field, Json, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.connection import parse_url as parse_redis_url

from awaken_project.envurls import database_from_url
from mailbox_app.contract.budgets import FORM as BUDGETS_FORM
from mailbox_app.contract.budgets import BudgetConfigError, TokenBudgets
from mailbox_app.contract.config import (
    DEFAULT_ALLOWED_NETWORKS,
    ClaimPolicy,
    ConfigError,
    MailboxConfig,
    Network,
    parse_networks,
)
from mailbox_app.contract.inbox import InboxPolicy
from mailbox_app.webhooks.targets import WebhookTargetError, parse_target

# Published keys (this module's development key, .env.example's placeholder): refused with DEBUG off.
DEV_SECRET_KEY = "dev-insecure-awaken-mailbox-secret-key-change-me"
PUBLISHED_SECRET_KEYS = frozenset({DEV_SECRET_KEY, "change-me"})
# Values never echoed in an error line.
SECRET_NAMES = frozenset({"SECRET_KEY", "AWAKEN_WEBHOOK_SECRET", "AWAKEN_METRICS_TOKEN"})
# DRF's rate form: a count and a period (DRF reads the period's first letter).
RATE = re.compile(r"^[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


class ConfigurationErrors(Exception):
    """One or more variables are unusable; `lines` holds one line per variable."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _ms(minimum: int, default: int, what: str = "milliseconds") -> Any:
    return Field(default=default, ge=minimum, description=f"an integer >= {minimum} ({what})")


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_commas)]
Flag = Annotated[bool, Field(description="a boolean: 1/0, true/false, yes/no, on/off")]


class Environment(BaseSettings):
    """The variables, each with its default and (in `description`) the form an error line names."""

    model_config = SettingsConfigDict(
        case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True, validate_default=False
    )

    # --- core ---
    DEBUG: Flag = False
    SECRET_KEY: str = Field(default="", description="a long random string (50+ characters)")
    ALLOWED_HOSTS: CommaList = Field(
        default=("localhost", "127.0.0.1", "[::1]"),
        description="comma-separated host names (e.g. api.example.com,.example.org), not URLs",
    )
    STATIC_ROOT: str = Field(default="", description="a directory path")
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="one of " + ", ".join(LOG_LEVELS)
    )
    LOG_FORMAT: Literal["text", "json"] = Field(default="text", description="text or json")
    # read by the Procfile's lines (the web server's port and process counts, the worker's pool size)
    PORT: int = Field(default=8000, ge=1, le=65535, description="a TCP port (1-65535)")
    WEB_CONCURRENCY: int = Field(default=2, ge=1, description="an integer >= 1 (web processes)")
    CELERY_CONCURRENCY: int = Field(default=2, ge=1, description="an integer >= 1 (worker pool size)")

    # --- HTTPS behind a proxy (issue 18 #10; `manage.py check --deploy`) ---
    SESSION_COOKIE_SECURE: Flag = False
    CSRF_COOKIE_SECURE: Flag = False
    SECURE_SSL_REDIRECT: Flag = False
    SECURE_HSTS_SECONDS: int = _ms(0, 0, "seconds; 0: no Strict-Transport-Security header")
    SECURE_HSTS_INCLUDE_SUBDOMAINS: Flag = False
    SECURE_HSTS_PRELOAD: Flag = False
    SECURE_PROXY_SSL_HEADER: CommaList = Field(
        default=(), description="HEADER,value as Django's META names it, e.g. HTTP_X_FORWARDED_PROTO,https"
    )
    CSRF_TRUSTED_ORIGINS: CommaList = Field(
        default=(), description="comma-separated origins with their scheme, e.g. https://api.example.com"
    )

    # --- database ---
    DATABASE_URL: str = Field(
        default="postgresql://postgres@localhost:5432/awaken",
        description="postgresql://USER:PASSWORD@HOST:PORT/NAME (or ?host=/socket/dir)",
    )
    DB_CONN_MAX_AGE: int = _ms(0, 60, "seconds")
    DB_POOL_MAX_SIZE: int = _ms(0, 0, "connections; 0: no pool")
    DB_SERVER_SIDE_BINDING: Flag = True
    DB_IDLE_TX_TIMEOUT_MS: int = _ms(0, 60_000)

    # --- redis / celery ---
    REDIS_URL: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis://[:PASSWORD@]HOST:PORT/DB, rediss://… or unix:///path/to/socket",
    )
    CELERY_BROKER_URL: str = Field(default="", description="a Celery broker URL (redis://…, amqp://…)")
    CELERY_VISIBILITY_TIMEOUT_S: int = _ms(1, 3600, "seconds")
    CELERY_DB_REUSE_MAX: int = _ms(0, 1000, "tasks")

    # --- the apps (mailbox_app/conf.py) ---
    AWAKEN_RUN_STORE: str = Field(
        default="runs_app.store",
        pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$",
        description="a dotted module path",
    )
    AWAKEN_AGENTS: Annotated[Json[dict[str, str]], NoDecode] = Field(
        default_factory=dict,
        description='a JSON object {"agent_id": "dotted.path.to.ExecutorClass"}',
    )
    AWAKEN_LIVE_ACK_TIMEOUT_MS: int = _ms(1, 500)
    AWAKEN_LIVE_SUSPEND_HOLD_MS: int = _ms(0, 15_000)
    AWAKEN_REMOTE_CANCEL_WAIT_MS: int = _ms(0, 5_000)
    AWAKEN_SSE_KEEPALIVE_MS: int = _ms(100, 15_000)
    AWAKEN_EVENTS_MAX_PER_RUN: int = _ms(1, 100_000, "events")
    AWAKEN_EVENTS_TTL_MS: int = _ms(1_000, 86_400_000)
    AWAKEN_BODY_READ_TIMEOUT_MS: int = _ms(1, 5_000)
    AWAKEN_BODY_BUFFER_MAX_BYTES: int = _ms(1024, 67_108_864, "bytes")
    AWAKEN_AUTH_CACHE_TTL_MS: int = _ms(0, 60_000, "milliseconds; 0: no cache")
    AWAKEN_AUTH_CACHE_MAX_ENTRIES: int = _ms(1, 10_000, "tokens")
    AWAKEN_DOORBELL_MAX_COUNTDOWN_MS: int = _ms(1, 300_000)
    AWAKEN_INBOX_DEFAULT: Annotated[Json[InboxPolicy], NoDecode] | None = Field(
        default=None,
        description=(
            'a JSON object {"debounce_ms": n, "max_wait_ms": n, "while_running": "steer|queue|interrupt"}'
        ),
    )
    AWAKEN_INBOX_AGENT_DEFAULTS: Annotated[Json[dict[str, InboxPolicy]], NoDecode] = Field(
        default_factory=dict,
        description='a JSON object {"agent_id": {"debounce_ms": n, ...}} (each as AWAKEN_INBOX_DEFAULT)',
    )
    AWAKEN_WEB_MAX_CONCURRENT_VIEWS: int = _ms(1, 16, "requests")
    AWAKEN_IDEMPOTENCY_TTL_MS: int = _ms(1, 86_400_000)
    AWAKEN_THREAD_TTL_MS: int = _ms(0, 0, "milliseconds; 0: never")
    AWAKEN_GC_MAX_PER_TICK: int = _ms(1, 10_000, "rows")
    AWAKEN_RUN_TIMEOUT_MS: int = _ms(1, 3_600_000)
    AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS: int = _ms(1, 500)
    AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS: int = _ms(1, 30_000)
    AWAKEN_STARTUP_RECOVERY_MAX_ATTEMPTS: int = _ms(1, 3, "attempts")
    AWAKEN_STARTUP_RECOVERY_RETRY_DELAY_MS: int = _ms(0, 250)
    AWAKEN_FAULT_POINT: str = Field(default="", description="a worker step name (tests only)")
    AWAKEN_WEBHOOK_URL: str = Field(default="", description="an absolute http(s) URL")
    AWAKEN_WEBHOOK_SECRET: str = ""
    AWAKEN_WEBHOOK_ALLOW_PRIVATE: Flag = False
    AWAKEN_WEBHOOK_MAX_ATTEMPTS: int = _ms(1, 10, "attempts")
    AWAKEN_WEBHOOK_RETRY_DELAY_MS: int = _ms(1, 1_000)
    AWAKEN_WEBHOOK_MAX_RETRY_DELAY_MS: int = _ms(1, 600_000)
    AWAKEN_WEBHOOK_TIMEOUT_MS: int = _ms(100, 5_000)
    AWAKEN_METRICS_TOKEN: str = ""
    AWAKEN_TOKEN_BUDGETS: str = Field(default="", description=f"a JSON object {BUDGETS_FORM}")
    AWAKEN_METRICS_ALLOWED_NETWORKS: str = Field(
        default=DEFAULT_ALLOWED_NETWORKS, description="comma-separated CIDRs, e.g. 10.0.0.0/8,::1/128"
    )
    AWAKEN_METRICS_DIR: str = Field(default="", description="a directory path")

    # --- the API's edge and the admin login ---
    AWAKEN_API_THROTTLE_RATE: str = Field(
        default="6000/minute", pattern=RATE.pattern, description="N/second, N/minute, N/hour or N/day"
    )
    AWAKEN_API_ANON_THROTTLE_RATE: str = Field(
        default="300/minute", pattern=RATE.pattern, description="N/second, N/minute, N/hour or N/day"
    )
    AWAKEN_API_NUM_PROXIES: int = _ms(0, 0, "proxies in front of the web server that set X-Forwarded-For")
    AWAKEN_API_MAX_BODY_BYTES: int = _ms(1024, 1_048_576, "bytes")
    AWAKEN_ADMIN_LOGIN_MAX_FAILURES: int = _ms(1, 5, "failed logins per client address and username")
    AWAKEN_ADMIN_LOGIN_LOCKOUT_S: int = _ms(1, 900, "seconds")

    # --- tracing (awaken_project/telemetry.py: on when an exporter is configured; the SDK reads them too)
    OTEL_TRACES_EXPORTER: str = Field(
        default="", pattern=r"^(otlp|console|none)$", description="otlp, console or none"
    )
    OTEL_EXPORTER_OTLP_ENDPOINT: str = Field(
        default="", description="the http(s) URL of an OTLP/HTTP collector, e.g. http://collector:4318"
    )
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: str = Field(
        default="", description="an http(s) URL with the traces path, e.g. http://collector:4318/v1/traces"
    )
    OTEL_EXPORTER_OTLP_PROTOCOL: str = Field(
        default="", pattern=r"^http/protobuf$", description="http/protobuf (the OTLP exporter installed)"
    )
    OTEL_SERVICE_NAME: str = ""

    @field_validator("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL", mode="before")
    @classmethod
    def _lower_name(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    @classmethod
    def _collector(cls, url: str) -> str:
        parts = urlsplit(url.strip())
        if url.strip() and (parts.scheme not in {"http", "https"} or not parts.netloc):
            raise ValueError(f"{url!r} lacks an http:// or https:// scheme and a host")
        return url.strip()

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("LOG_FORMAT", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("ALLOWED_HOSTS")
    @classmethod
    def _host_names(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            if "/" in host or " " in host:
                raise ValueError(f"{host!r} is not a host name")
        return hosts

    @field_validator("SECURE_PROXY_SSL_HEADER")
    @classmethod
    def _header_and_value(cls, parts: tuple[str, ...]) -> tuple[str, ...]:
        if parts and (len(parts) != 2 or not re.fullmatch(r"HTTP_[A-Z0-9_]+", parts[0])):
            raise ValueError("two comma-separated parts, a header name starting HTTP_ and a value")
        return parts

    @field_validator("CSRF_TRUSTED_ORIGINS")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError(f"{origin!r} lacks an http:// or https:// scheme and a host")
        return origins

    @field_validator("DATABASE_URL")
    @classmethod
    def _postgres(cls, url: str) -> str:
        try:
            database_from_url(url)
        except ValueError as exc:
            raise ValueError(str(exc).split(", got")[0]) from None
        return url

    @field_validator("REDIS_URL")
    @classmethod
    def _redis(cls, url: str) -> str:
        _check_redis_url(url)
        return url

    @field_validator("CELERY_BROKER_URL")
    @classmethod
    def _broker(cls, url: str) -> str:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme.split("+")[0] not in TRANSPORT_ALIASES:
            raise ValueError(f"{scheme or url!r} is not a broker URL scheme Celery knows")
        if scheme in {"redis", "rediss"}:
            _check_redis_url(url)
        return url

    @field_validator("AWAKEN_METRICS_ALLOWED_NETWORKS")
    @classmethod
    def _networks(cls, value: str) -> str:
        try:
            parse_networks("AWAKEN_METRICS_ALLOWED_NETWORKS", value)
        except ConfigError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return value

    @field_validator("AWAKEN_TOKEN_BUDGETS")
    @classmethod
    def _budgets(cls, value: str) -> str:
        try:
            TokenBudgets.parse(value)
        except BudgetConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("AWAKEN_WEBHOOK_URL")
    @classmethod
    def _webhook(cls, url: str) -> str:
        if url.strip():
            try:
                parse_target(url)
            except WebhookTargetError as exc:
                raise ValueError(f"the URL {exc}") from None
        return url.strip()

    @model_validator(mode="after")
    def _secret_key_with_debug_off(self) -> Environment:
        # An environment that configures none of DEBUG / ALLOWED_HOSTS / SECRET_KEY is a local checkout's
        # tooling (pytest, mypy's Django plugin, `manage.py check`, the benchmarks), which then only
        # answers local host names. Saying DEBUG=0 or naming hosts means a deployment.
        local_tooling = not ({"DEBUG", "ALLOWED_HOSTS", "SECRET_KEY"} & self.model_fields_set)
        if not self.DEBUG and self.secret_key in PUBLISHED_SECRET_KEYS and not local_tooling:
            raise ValueError(
                "SECRET_KEY is unset or a published development value while DEBUG is off: set SECRET_KEY "
                "to a long random string (python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
                "or DEBUG=1 for local development"
            )
        return self

    @property
    def secret_key(self) -> str:
        return self.SECRET_KEY.strip() or DEV_SECRET_KEY

    @property
    def broker_url(self) -> str:
        return self.CELERY_BROKER_URL or self.REDIS_URL


def _check_redis_url(url: str) -> None:
    try:
        parse_redis_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    path = urlsplit(url).path
    if url.startswith(("redis://", "rediss://")) and path.strip("/") and not path.strip("/").isdigit():
        raise ValueError(f"the database {path!r} is not a number")


class Parsed:
    """The environment and the apps' structured settings parsed from it."""

    def __init__(
        self,
        env: Environment,
        mailbox: MailboxConfig,
        claim_policy: ClaimPolicy,
        metrics_networks: tuple[Network, ...],
    ) -> None:
        self.env = env
        self.mailbox = mailbox
        self.claim_policy = claim_policy
        self.metrics_networks = metrics_networks


def load(environ: Mapping[str, str]) -> Parsed:
    """Parse `Environment` (pydantic-settings reads os.environ) and the apps' models from `environ`;
    ConfigurationErrors lists every bad variable, one line each."""
    lines: list[str] = []
    env: Environment | None = None
    try:
        env = Environment()
    except ValidationError as exc:
        lines += [_line(error, environ) for error in exc.errors()]
    mailbox, policy = MailboxConfig(), ClaimPolicy()
    try:
        mailbox = MailboxConfig.from_env(environ)
    except ConfigError as exc:
        lines.append(str(exc))
    try:
        policy = ClaimPolicy.from_env(environ)
    except ConfigError as exc:
        lines.append(str(exc))
    if lines or env is None:
        raise ConfigurationErrors(lines)
    # the one variable whose empty value means something: no network, the bearer token only
    raw_networks = environ.get("AWAKEN_METRICS_ALLOWED_NETWORKS")
    if raw_networks is None or raw_networks.strip():
        raw_networks = env.AWAKEN_METRICS_ALLOWED_NETWORKS
    networks = parse_networks("AWAKEN_METRICS_ALLOWED_NETWORKS", raw_networks)
    return Parsed(env, mailbox, policy, networks)


def _line(error: Any, environ: Mapping[str, str]) -> str:
    """`NAME='value': reason; expected <form>` for a field, or the model check's own sentence."""
    loc = error.get("loc") or ()
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    if not loc:
        return message
    name = str(loc[0])
    field = Environment.model_fields.get(name)
    form = field.description if field is not None and field.description else "a valid value"
    shown = "<hidden>" if name in SECRET_NAMES else URL_PASSWORD.sub(r"\1***@", environ.get(name, ""))
    reason = f"{message}; " if error.get("type") == "value_error" else ""
    return f"{name}={shown!r}: {reason}expected {form}"
