"""Django settings, all from the environment. Sections: core, database, redis/celery, mailbox, api."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from awaken_project.environment import ConfigurationErrors, load
from awaken_project.envurls import database_from_url
from awaken_project.logconfig import logging_config
from mailbox_app.contract.budgets import TokenBudgets

BASE_DIR = Path(__file__).resolve().parent.parent

# Every variable parsed and checked at once (awaken_project/environment.py): a bad one stops start-up
# here with one line naming it and the form it accepts — `manage.py check`, the web server and the
# workers alike — instead of a traceback, or a 500 on every request later.
try:
    _PARSED = load(os.environ)
except ConfigurationErrors as exc:
    for _line in exc.lines:
        sys.stderr.write(f"awaken-mailbox configuration error: {_line}\n")
    raise SystemExit(2) from None
_ENV = _PARSED.env

# --- core -------------------------------------------------------------------------------------
DEBUG = _ENV.DEBUG
# Published keys (environment.py's development key, .env.example's placeholder) are refused with DEBUG
# off, unless the environment configures none of DEBUG / ALLOWED_HOSTS / SECRET_KEY (a checkout's tools).
SECRET_KEY = _ENV.secret_key
# Comma-separated; unset means this machine only (a deployment must name its hosts; never `*` by default).
ALLOWED_HOSTS = list(_ENV.ALLOWED_HOSTS)

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
    # /static/ from the web process (whitenoise: gzip, cache headers), served without a thread hop or a
    # warning under ASGI (awaken_project/staticfiles.py)
    "awaken_project.staticfiles.StaticFilesMiddleware",
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
# Filled by `manage.py collectstatic` (the Procfile's web line runs it before the server starts).
STATIC_ROOT = Path(_ENV.STATIC_ROOT or BASE_DIR / ".data" / "static")
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
# `make run` / the test harness export the embedded server's URL when DATABASE_URL is unset.
DATABASES = {"default": database_from_url(_ENV.DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = _ENV.DB_CONN_MAX_AGE
# The web process under ASGI runs each request's sync view in a thread of its own: a connection pool
# (psycopg_pool, through Django's `pool` option) lets those threads share warm connections instead of
# opening one per request. asgi.py turns it on; Celery workers keep their persistent connections.
if _ENV.DB_POOL_MAX_SIZE > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django requires it with a pool
    _pool_min = min(2, _ENV.DB_POOL_MAX_SIZE)  # (a one-view process: min_size may not exceed max_size)
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": _pool_min,
        "max_size": _ENV.DB_POOL_MAX_SIZE,
        "timeout": 10,
    }
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Server-side binding lets psycopg prepare the statements a connection repeats (after
# `prepare_threshold` runs): the hot path's CTE statements are then parsed and planned once per
# connection instead of on every transition (bench/store_bench.py, before/after in the commit).
if _ENV.DB_SERVER_SIDE_BINDING:
    DATABASES["default"]["OPTIONS"].setdefault("server_side_binding", True)
    DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", 2)
# Long transactions pin the xmin horizon and bloat queue tables (docs/pitfalls.md §3): cap idle ones.
DATABASES["default"]["OPTIONS"].setdefault(
    "options", f"-c idle_in_transaction_session_timeout={_ENV.DB_IDLE_TX_TIMEOUT_MS}"
)

# --- redis / celery ---------------------------------------------------------------------------
REDIS_URL = _ENV.REDIS_URL
# the apps' Redis (locks, live commands, event streams): the apps read AWAKEN_* settings only
AWAKEN_REDIS_URL = REDIS_URL
# The API's throttle counts and the admin login's failure counts live in Redis, so that every web
# process (and every host) shares them (awaken_project/throttling.py, awaken_project/admin_login.py).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "awaken",
        "OPTIONS": {
            "socket_timeout": 2,
            "socket_connect_timeout": 2,
            # a request's throttle count is one round trip: a few connections serve a process's
            # concurrent requests (awaken_project/throttling.py), not one each
            "pool_class": "redis.BlockingConnectionPool",
            "max_connections": 4,
            "timeout": 2,
        },
    },
}
CELERY_BROKER_URL = _ENV.broker_url
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": _ENV.CELERY_VISIBILITY_TIMEOUT_S}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Celery's Django fixup closes DB connections around every task unless told to reuse them; a reconnect
# cost ~5.6 ms per dispatch (bench/breakdown.py). Health checks (CONN_HEALTH_CHECKS) catch dead ones.
CELERY_DB_REUSE_MAX = _ENV.CELERY_DB_REUSE_MAX
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Webhook deliveries on a queue of their own (mailbox_app.webhooks.outbox.QUEUE), consumed by the
# Procfile's `webhooks` worker: slow receivers never hold a dispatch worker's slots (docs/webhooks.md).
CELERY_TASK_ROUTES = {
    "mailbox.deliver_webhook": {"queue": "webhooks"},
    "mailbox.redrive_webhooks": {"queue": "webhooks"},
}
# Celery logs through LOGGING below (awaken_project/celery.py answers its setup_logging signal): the
# same format as the web's, and print() output left alone instead of turned into WARNING records.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_REDIRECT_STDOUTS = False

# --- mailbox ----------------------------------------------------------------------------------
# The environment parsed into the apps' AWAKEN_* settings. The apps read them through
# mailbox_app.conf.awaken_settings, whose defaults equal the ones here (tests/mailbox_app/test_conf.py).
AWAKEN_MAILBOX = _PARSED.mailbox
# fairness across owners and concurrency limits (mailbox_app/conf.py)
AWAKEN_CLAIM_POLICY = _PARSED.claim_policy
# Token budgets per owner and per agent at admission (docs/replay-and-budgets.md); unset: none.
AWAKEN_TOKEN_BUDGETS = TokenBudgets.parse(_ENV.AWAKEN_TOKEN_BUDGETS)
AWAKEN_RUN_STORE = _ENV.AWAKEN_RUN_STORE
# Extra agents: a JSON object {"agent_id": "dotted.path.to.ExecutorClass"}; `echo` is built in.
AWAKEN_AGENTS: dict[str, str] = dict(_ENV.AWAKEN_AGENTS)
AWAKEN_LIVE_ACK_TIMEOUT_MS = _ENV.AWAKEN_LIVE_ACK_TIMEOUT_MS
# How long a suspended run holds its claim waiting for a live decision before ending `waiting`.
AWAKEN_LIVE_SUSPEND_HOLD_MS = _ENV.AWAKEN_LIVE_SUSPEND_HOLD_MS
AWAKEN_REMOTE_CANCEL_WAIT_MS = _ENV.AWAKEN_REMOTE_CANCEL_WAIT_MS
# An idle SSE stream sends a keep-alive comment this often (runs_app/api/sse.py).
AWAKEN_SSE_KEEPALIVE_MS = _ENV.AWAKEN_SSE_KEEPALIVE_MS
# A run's event stream keeps at least this many events, this long after its last (docs/streams.md).
AWAKEN_EVENTS_MAX_PER_RUN = _ENV.AWAKEN_EVENTS_MAX_PER_RUN
AWAKEN_EVENTS_TTL_MS = _ENV.AWAKEN_EVENTS_TTL_MS
# Requests of one web process inside their (sync, one thread and DB connection each) view at once.
AWAKEN_WEB_MAX_CONCURRENT_VIEWS = _ENV.AWAKEN_WEB_MAX_CONCURRENT_VIEWS
# How long an Idempotency-Key replays its first answer; older keys are purged by the mailbox GC.
AWAKEN_IDEMPOTENCY_TTL_MS = _ENV.AWAKEN_IDEMPOTENCY_TTL_MS
# Threads idle longer than this are deleted by the mailbox GC (runs_app/store/threads.py); 0: never.
AWAKEN_THREAD_TTL_MS = _ENV.AWAKEN_THREAD_TTL_MS
# At most this many rows (orphaned epoch rows; expired threads) each GC purge removes per tick.
AWAKEN_GC_MAX_PER_TICK = _ENV.AWAKEN_GC_MAX_PER_TICK
# Each run activation's time budget unless a submit's `timeout_s` says otherwise
# (mailbox_app/services/timeouts.py).
AWAKEN_RUN_TIMEOUT_MS = _ENV.AWAKEN_RUN_TIMEOUT_MS
AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS = _ENV.AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS
AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS = _ENV.AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS
AWAKEN_STARTUP_RECOVERY_MAX_ATTEMPTS = _ENV.AWAKEN_STARTUP_RECOVERY_MAX_ATTEMPTS
AWAKEN_STARTUP_RECOVERY_RETRY_DELAY_MS = _ENV.AWAKEN_STARTUP_RECOVERY_RETRY_DELAY_MS
# Test hook: make a worker os._exit at a named step (after_claim, mid_run, after_result).
AWAKEN_FAULT_POINT = _ENV.AWAKEN_FAULT_POINT
# The inbox policy of a thread that sets none (docs/inbox.md): its agent's, else the project's (None: none).
AWAKEN_INBOX_AGENT_DEFAULTS = dict(_ENV.AWAKEN_INBOX_AGENT_DEFAULTS)
AWAKEN_INBOX_DEFAULT = _ENV.AWAKEN_INBOX_DEFAULT

# --- webhooks (mailbox_app/webhooks/outbox.py) --------------------------------------------------------------
# Called for every run without a per-submit `webhook`; empty: none.
AWAKEN_WEBHOOK_URL = _ENV.AWAKEN_WEBHOOK_URL
# Signs deliveries to AWAKEN_WEBHOOK_URL only (a user's URL: that user's secret; docs/webhooks.md).
AWAKEN_WEBHOOK_SECRET = _ENV.AWAKEN_WEBHOOK_SECRET
# Loopback, link-local and private-range targets are refused unless this is on.
AWAKEN_WEBHOOK_ALLOW_PRIVATE = _ENV.AWAKEN_WEBHOOK_ALLOW_PRIVATE
AWAKEN_WEBHOOK_MAX_ATTEMPTS = _ENV.AWAKEN_WEBHOOK_MAX_ATTEMPTS
AWAKEN_WEBHOOK_RETRY_DELAY_MS = _ENV.AWAKEN_WEBHOOK_RETRY_DELAY_MS
AWAKEN_WEBHOOK_MAX_RETRY_DELAY_MS = _ENV.AWAKEN_WEBHOOK_MAX_RETRY_DELAY_MS
# The whole of one attempt (DNS, connect, TLS, send, the answer), not a per-read timeout.
AWAKEN_WEBHOOK_TIMEOUT_MS = _ENV.AWAKEN_WEBHOOK_TIMEOUT_MS

# --- metrics (mailbox_app/observability/metrics.py, GET /metrics) -------------------------------------------
# A scrape is allowed with `Authorization: Bearer <AWAKEN_METRICS_TOKEN>` (unset: no token works) or from
# an address in AWAKEN_METRICS_ALLOWED_NETWORKS (comma-separated CIDRs; default loopback; empty: none).
AWAKEN_METRICS_TOKEN = _ENV.AWAKEN_METRICS_TOKEN.strip()
AWAKEN_METRICS_ALLOWED_NETWORKS = _PARSED.metrics_networks
# One directory per host whose subdirectories are the services' PROMETHEUS_MULTIPROC_DIRs
# (scripts/metrics-dir.sh); a scrape merges them all. Unset: PROMETHEUS_MULTIPROC_DIR alone.
AWAKEN_METRICS_DIR = _ENV.AWAKEN_METRICS_DIR.strip()

# --- api --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an unauthenticated request then gets 401 with a WWW-Authenticate header
        "runs_app.api.auth.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON with depth, NUL and lone-surrogate checks (runs_app/api/inputs.py)
    "DEFAULT_PARSER_CLASSES": ["runs_app.api.inputs.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Counted in Redis (the `throttle` cache), atomically: every web process shares one count per
    # user (or, for a request without valid credentials, per client address).
    "DEFAULT_THROTTLE_CLASSES": [
        "awaken_project.throttling.SharedUserRateThrottle",
        "awaken_project.throttling.SharedAnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": _ENV.AWAKEN_API_THROTTLE_RATE,
        "anon": _ENV.AWAKEN_API_ANON_THROTTLE_RATE,
    },
    # The client address is REMOTE_ADDR unless this many proxies in front append to X-Forwarded-For
    # (DRF's default, None, would trust any X-Forwarded-For a client sends).
    "NUM_PROXIES": _ENV.AWAKEN_API_NUM_PROXIES,
    "EXCEPTION_HANDLER": "runs_app.api.errors.exception_handler",
}
# Request bodies larger than this answer 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = _ENV.AWAKEN_API_MAX_BODY_BYTES
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
# Failed admin logins per client address and username before the login refuses (429) for the lockout
# (awaken_project/admin_login.py; counted in the `throttle` cache).
ADMIN_LOGIN_MAX_FAILURES = _ENV.AWAKEN_ADMIN_LOGIN_MAX_FAILURES
ADMIN_LOGIN_LOCKOUT_S = _ENV.AWAKEN_ADMIN_LOGIN_LOCKOUT_S

# --- HTTPS (behind a TLS-terminating proxy; `manage.py check --deploy`, docs/operations.md) -------
SESSION_COOKIE_SECURE = _ENV.SESSION_COOKIE_SECURE
CSRF_COOKIE_SECURE = _ENV.CSRF_COOKIE_SECURE
SECURE_SSL_REDIRECT = _ENV.SECURE_SSL_REDIRECT
# the container HEALTHCHECK, readiness probes and Prometheus speak plain HTTP to the process itself
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = _ENV.SECURE_HSTS_SECONDS
SECURE_HSTS_INCLUDE_SUBDOMAINS = _ENV.SECURE_HSTS_INCLUDE_SUBDOMAINS
SECURE_HSTS_PRELOAD = _ENV.SECURE_HSTS_PRELOAD
if _ENV.SECURE_PROXY_SSL_HEADER:
    SECURE_PROXY_SSL_HEADER = (_ENV.SECURE_PROXY_SSL_HEADER[0], _ENV.SECURE_PROXY_SSL_HEADER[1])
CSRF_TRUSTED_ORIGINS = list(_ENV.CSRF_TRUSTED_ORIGINS)

# --- logging (awaken_project/logconfig.py): one format for every process, JSON with LOG_FORMAT=json --
LOGGING = logging_config(level=_ENV.LOG_LEVEL, fmt=_ENV.LOG_FORMAT)

# --- api: the web edge (awaken_project/intake.py, runs_app/api/auth.py) -------------------------------
# A request body must arrive whole within this long (from its headers) or the request answers 408.
AWAKEN_BODY_READ_TIMEOUT_MS = _ENV.AWAKEN_BODY_READ_TIMEOUT_MS
# Request bodies one web process holds at once (read before the view permits); past it: 503, Retry-After.
AWAKEN_BODY_BUFFER_MAX_BYTES = _ENV.AWAKEN_BODY_BUFFER_MAX_BYTES
# A token is trusted this long without a query (0: no cache); revocation is immediate regardless.
AWAKEN_AUTH_CACHE_TTL_MS = _ENV.AWAKEN_AUTH_CACHE_TTL_MS
AWAKEN_AUTH_CACHE_MAX_ENTRIES = _ENV.AWAKEN_AUTH_CACHE_MAX_ENTRIES
# The longest doorbell countdown (delayed starts, retries); later rings are the sweep's. At most half the
# visibility timeout: a longer countdown is redelivered every visibility timeout (docs/pitfalls.md §1).
AWAKEN_DOORBELL_MAX_COUNTDOWN_MS = min(
    _ENV.AWAKEN_DOORBELL_MAX_COUNTDOWN_MS, CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] * 500
)
