"""Django settings, all from the environment. Sections: core, database, redis/celery, mailbox, api."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from awaken_project.envurls import database_from_url
from mailbox_app.contract.config import DEFAULT_ALLOWED_NETWORKS as DEFAULT_METRICS_NETWORKS
from mailbox_app.contract.config import ClaimPolicy, ConfigError, MailboxConfig
from mailbox_app.contract.config import parse_networks as parse_metrics_networks
from mailbox_app.webhooks.targets import WebhookTargetError
from mailbox_app.webhooks.targets import parse_target as parse_webhook_target

BASE_DIR = Path(__file__).resolve().parent.parent
ENV = os.environ


def _env_bool(name: str, default: bool) -> bool:
    value = ENV.get(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}={value!r}: expected a boolean (1/0, true/false)")


def _env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = ENV.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be >= {minimum}")
    return value


# --- core -------------------------------------------------------------------------------------
DEBUG = _env_bool("DEBUG", False)
# Published keys (this file's development key, .env.example's placeholder) are refused with DEBUG off.
# One exception: an environment that configures none of DEBUG / ALLOWED_HOSTS / SECRET_KEY is a local
# checkout's tooling (pytest, mypy's Django plugin, `manage.py check`, the benchmarks), which then only
# answers local host names (ALLOWED_HOSTS below). Saying DEBUG=0 or naming hosts means a deployment.
DEV_SECRET_KEY = "dev-insecure-awaken-mailbox-secret-key-change-me"
_PUBLISHED_SECRET_KEYS = {DEV_SECRET_KEY, "change-me"}
SECRET_KEY = ENV.get("SECRET_KEY", "").strip() or DEV_SECRET_KEY
_LOCAL_TOOLING = not any(name in ENV for name in ("DEBUG", "ALLOWED_HOSTS", "SECRET_KEY"))
if not DEBUG and SECRET_KEY in _PUBLISHED_SECRET_KEYS and not _LOCAL_TOOLING:
    raise ImproperlyConfigured(
        "SECRET_KEY is unset or a published development value while DEBUG is off: set SECRET_KEY to a "
        "long random string (python -c 'import secrets; print(secrets.token_urlsafe(50))'), or DEBUG=1 "
        "for local development. `make run` generates one under its data directory."
    )
# Comma-separated; unset means this machine only (a deployment must name its hosts; never `*` by default).
ALLOWED_HOSTS = [
    h.strip() for h in ENV.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from /static/, no CDN
    "django_celery_beat",
    "mailbox_app",
    "runs_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # /static/ from the web process (gzip/brotli)
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "awaken_project.urls"
WSGI_APPLICATION = "awaken_project.wsgi.application"
ASGI_APPLICATION = "awaken_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# Filled by `manage.py collectstatic` (scripts/run.sh runs it before the server starts); .data/ is ignored.
STATIC_ROOT = Path(ENV.get("STATIC_ROOT") or BASE_DIR / ".data" / "static")
try:  # whitenoise warns for a missing STATIC_ROOT (an error under pytest) before the first collectstatic
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:  # a read-only image: collectstatic ran at build time, or it will say what is wrong
    pass
# Compressed copies (gzip, brotli when installed) served by whitenoise with ETag/Last-Modified. Not the
# manifest (hashed-name) storage: it cannot render `{% static %}` with DEBUG off until collectstatic ran,
# which would break the admin in tests and in any process started before it.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- database ---------------------------------------------------------------------------------
# DATABASE_URL is required: `make run` / the test harness export the embedded server's URL when unset.
_database_url = ENV.get("DATABASE_URL", "postgresql://postgres@localhost:5432/awaken")
DATABASES = {"default": database_from_url(_database_url)}
DATABASES["default"]["CONN_MAX_AGE"] = _env_int("DB_CONN_MAX_AGE", 60)
# The web process under ASGI runs each request's sync view in a thread of its own: a connection pool
# (psycopg_pool, through Django's `pool` option) lets those threads share warm connections instead of
# opening one per request. asgi.py turns it on; Celery workers keep their persistent connections.
_DB_POOL_MAX = _env_int("DB_POOL_MAX_SIZE", 0)
if _DB_POOL_MAX > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django requires it with a pool
    _pool_min = min(2, _DB_POOL_MAX)  # (a one-view process: min_size may not exceed max_size)
    DATABASES["default"]["OPTIONS"]["pool"] = {"min_size": _pool_min, "max_size": _DB_POOL_MAX, "timeout": 10}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Server-side binding lets psycopg prepare the statements a connection repeats (after
# `prepare_threshold` runs): the hot path's CTE statements are then parsed and planned once per
# connection instead of on every transition (bench/store_bench.py, before/after in the commit).
if _env_bool("DB_SERVER_SIDE_BINDING", True):
    DATABASES["default"]["OPTIONS"].setdefault("server_side_binding", True)
    DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", 2)
# Long transactions pin the xmin horizon and bloat queue tables (docs/pitfalls.md §3): cap idle ones.
DATABASES["default"]["OPTIONS"].setdefault(
    "options", f"-c idle_in_transaction_session_timeout={_env_int('DB_IDLE_TX_TIMEOUT_MS', 60_000)}"
)

# --- redis / celery ---------------------------------------------------------------------------
REDIS_URL = ENV.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# the apps' Redis (locks, live commands, event streams): the apps read AWAKEN_* settings only
AWAKEN_REDIS_URL = REDIS_URL
CELERY_BROKER_URL = ENV.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": _env_int("CELERY_VISIBILITY_TIMEOUT_S", 3600)}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Celery's Django fixup closes DB connections around every task unless told to reuse them; a reconnect
# cost ~5.6 ms per dispatch (bench/breakdown.py). Health checks (CONN_HEALTH_CHECKS) catch dead ones.
CELERY_DB_REUSE_MAX = _env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# --- mailbox ----------------------------------------------------------------------------------
# The environment parsed into the apps' AWAKEN_* settings. The apps read them through
# mailbox_app.conf.awaken_settings, whose defaults equal the ones here (tests/mailbox_app/test_conf.py).
try:
    AWAKEN_MAILBOX = MailboxConfig.from_env(ENV)
except ConfigError as exc:  # stop start-up with the variable's name, not a traceback
    sys.stderr.write(f"awaken-mailbox configuration error: {exc}\n")
    raise SystemExit(2) from None

# fairness across owners and concurrency limits (mailbox_app/conf.py)
try:
    AWAKEN_CLAIM_POLICY = ClaimPolicy.from_env(ENV)
except ConfigError as exc:
    sys.stderr.write(f"awaken-mailbox configuration error: {exc}\n")
    raise SystemExit(2) from None

AWAKEN_RUN_STORE = ENV.get("AWAKEN_RUN_STORE", "runs_app.store")
# Extra agents: a JSON object {"agent_id": "dotted.path.to.ExecutorClass"}; `echo` is built in.
try:
    AWAKEN_AGENTS: dict[str, str] = json.loads(ENV.get("AWAKEN_AGENTS", "{}"))
except json.JSONDecodeError as exc:
    sys.stderr.write(f"awaken-mailbox configuration error: AWAKEN_AGENTS is not JSON: {exc}\n")
    raise SystemExit(2) from None
AWAKEN_LIVE_ACK_TIMEOUT_MS = _env_int("AWAKEN_LIVE_ACK_TIMEOUT_MS", 500, minimum=1)
# How long a suspended run holds its claim waiting for a live decision before ending `waiting`.
AWAKEN_LIVE_SUSPEND_HOLD_MS = _env_int("AWAKEN_LIVE_SUSPEND_HOLD_MS", 15_000)
AWAKEN_REMOTE_CANCEL_WAIT_MS = _env_int("AWAKEN_REMOTE_CANCEL_WAIT_MS", 5_000)
# An idle SSE stream sends a keep-alive comment this often (runs_app/api/sse.py).
AWAKEN_SSE_KEEPALIVE_MS = _env_int("AWAKEN_SSE_KEEPALIVE_MS", 15_000, minimum=100)
# Requests of one web process inside their (sync, one thread and DB connection each) view at once.
AWAKEN_WEB_MAX_CONCURRENT_VIEWS = _env_int("AWAKEN_WEB_MAX_CONCURRENT_VIEWS", 16, minimum=1)
# How long an Idempotency-Key replays its first answer; older keys are purged by the mailbox GC.
AWAKEN_IDEMPOTENCY_TTL_MS = _env_int("AWAKEN_IDEMPOTENCY_TTL_MS", 86_400_000, minimum=1)
# Threads idle longer than this are deleted by the mailbox GC (runs_app/services/threads.py); 0: never.
AWAKEN_THREAD_TTL_MS = _env_int("AWAKEN_THREAD_TTL_MS", 0)
# At most this many rows (orphaned epoch rows; expired threads) each GC purge removes per tick.
AWAKEN_GC_MAX_PER_TICK = _env_int("AWAKEN_GC_MAX_PER_TICK", 10_000, minimum=1)
# Each run activation's time budget unless a submit's `timeout_s` says otherwise
# (mailbox_app/services/timeouts.py).
AWAKEN_RUN_TIMEOUT_MS = _env_int("AWAKEN_RUN_TIMEOUT_MS", 3_600_000, minimum=1)
AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS = _env_int(
    "AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS", 500, minimum=1
)
AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS = _env_int(
    "AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS", 30_000, minimum=1
)
AWAKEN_STARTUP_RECOVERY_MAX_ATTEMPTS = _env_int("AWAKEN_STARTUP_RECOVERY_MAX_ATTEMPTS", 3, minimum=1)
AWAKEN_STARTUP_RECOVERY_RETRY_DELAY_MS = _env_int("AWAKEN_STARTUP_RECOVERY_RETRY_DELAY_MS", 250)
# Test hook: make a worker os._exit at a named step (after_claim, mid_run, after_result).
AWAKEN_FAULT_POINT = ENV.get("AWAKEN_FAULT_POINT", "")

# --- webhooks (mailbox_app/webhooks/outbox.py) --------------------------------------------------------------
# Called for every run without a per-submit `webhook`; empty: none.
AWAKEN_WEBHOOK_URL = ENV.get("AWAKEN_WEBHOOK_URL", "").strip()
if AWAKEN_WEBHOOK_URL:
    try:
        parse_webhook_target(AWAKEN_WEBHOOK_URL)
    except WebhookTargetError as exc:
        sys.stderr.write(f"awaken-mailbox configuration error: AWAKEN_WEBHOOK_URL {exc}\n")
        raise SystemExit(2) from None
# Deliveries are signed `X-Awaken-Signature: sha256=<HMAC-SHA256 of the body>` with it (unset: unsigned).
AWAKEN_WEBHOOK_SECRET = ENV.get("AWAKEN_WEBHOOK_SECRET", "")
# Loopback, link-local and private-range targets are refused unless this is on.
AWAKEN_WEBHOOK_ALLOW_PRIVATE = _env_bool("AWAKEN_WEBHOOK_ALLOW_PRIVATE", False)
AWAKEN_WEBHOOK_MAX_ATTEMPTS = _env_int("AWAKEN_WEBHOOK_MAX_ATTEMPTS", 10, minimum=1)
AWAKEN_WEBHOOK_RETRY_DELAY_MS = _env_int("AWAKEN_WEBHOOK_RETRY_DELAY_MS", 1_000, minimum=1)
AWAKEN_WEBHOOK_MAX_RETRY_DELAY_MS = _env_int("AWAKEN_WEBHOOK_MAX_RETRY_DELAY_MS", 600_000, minimum=1)
AWAKEN_WEBHOOK_TIMEOUT_MS = _env_int("AWAKEN_WEBHOOK_TIMEOUT_MS", 5_000, minimum=100)

# --- metrics (mailbox_app/observability/metrics.py, GET /metrics) -------------------------------------------
# A scrape is allowed with `Authorization: Bearer <AWAKEN_METRICS_TOKEN>` (unset: no token works) or from
# an address in AWAKEN_METRICS_ALLOWED_NETWORKS (comma-separated CIDRs; default loopback; empty: none).
AWAKEN_METRICS_TOKEN = ENV.get("AWAKEN_METRICS_TOKEN", "").strip()
try:
    AWAKEN_METRICS_ALLOWED_NETWORKS = parse_metrics_networks(
        "AWAKEN_METRICS_ALLOWED_NETWORKS",
        ENV.get("AWAKEN_METRICS_ALLOWED_NETWORKS", DEFAULT_METRICS_NETWORKS),
    )
except ConfigError as exc:
    sys.stderr.write(f"awaken-mailbox configuration error: {exc}\n")
    raise SystemExit(2) from None
# One directory per host whose subdirectories are the services' PROMETHEUS_MULTIPROC_DIRs
# (scripts/metrics-dir.sh); a scrape merges them all. Unset: PROMETHEUS_MULTIPROC_DIR alone.
AWAKEN_METRICS_DIR = ENV.get("AWAKEN_METRICS_DIR", "").strip()

# --- api --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an unauthenticated request then gets 401 with a WWW-Authenticate header
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON with depth, NUL and lone-surrogate checks (runs_app/api/inputs.py)
    "DEFAULT_PARSER_CLASSES": ["runs_app.api.inputs.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": ENV.get("AWAKEN_API_THROTTLE_RATE", "6000/minute")},
    "EXCEPTION_HANDLER": "runs_app.api.errors.exception_handler",
}
# Request bodies larger than this answer 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = _env_int("AWAKEN_API_MAX_BODY_BYTES", 1_048_576, minimum=1024)
SPECTACULAR_SETTINGS = {
    "TITLE": "awaken-mailbox API",
    "VERSION": "1.0.0",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # one named enum per choice set that several bodies share (else "StatusFd7Enum" and a warning)
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "runs_app.api.run_serializers.RUN_STATUSES",
        "SubmitStatusEnum": "runs_app.api.responses.SUBMIT_STATUSES",
        "DispatchStatusEnum": "runs_app.api.responses.DISPATCH_STATUSES",
        "ThreadStatusEnum": "runs_app.api.thread_serializers.THREAD_STATUSES",
        "CancelRequestedEnum": "runs_app.api.responses.CANCEL_REQUESTED",
        "DecisionSubmittedEnum": "runs_app.api.responses.DECISION_SUBMITTED",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "runs_app.api.schema_hooks.declare_request_headers",
    ],
}
LOGIN_URL = "admin:login"  # the API docs send a browser without a session there

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": ENV.get("LOG_LEVEL", "INFO")},
}

# --- api: the web edge (awaken_project/intake.py, runs_app/api/auth.py) -------------------------------
# A request body must arrive whole within this long (from its headers) or the request answers 408.
AWAKEN_BODY_READ_TIMEOUT_MS = _env_int("AWAKEN_BODY_READ_TIMEOUT_MS", 5_000, minimum=1)
# Request bodies one web process holds at once (read before the view permits); past it: 503, Retry-After.
AWAKEN_BODY_BUFFER_MAX_BYTES = _env_int("AWAKEN_BODY_BUFFER_MAX_BYTES", 67_108_864, minimum=1024)
# A token is trusted this long without a query (0: no cache); revocation is immediate regardless.
AWAKEN_AUTH_CACHE_TTL_MS = _env_int("AWAKEN_AUTH_CACHE_TTL_MS", 60_000)
AWAKEN_AUTH_CACHE_MAX_ENTRIES = _env_int("AWAKEN_AUTH_CACHE_MAX_ENTRIES", 10_000, minimum=1)
# The longest doorbell countdown (delayed starts, retries); later rings are the sweep's. At most half the
# visibility timeout: a longer countdown is redelivered every visibility timeout (docs/pitfalls.md §1).
AWAKEN_DOORBELL_MAX_COUNTDOWN_MS = min(
    _env_int("AWAKEN_DOORBELL_MAX_COUNTDOWN_MS", 300_000, minimum=1),
    CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] * 500,
)
