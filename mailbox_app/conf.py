"""The apps' settings, each with its default: `awaken_settings.<NAME>` is the host's `AWAKEN_<NAME>`.

The way DRF's `api_settings` works, minus the cache: every attribute reads the host's Django setting
on each access (one attribute lookup on `django.conf.settings`, which caches it itself), so
`override_settings` and pytest-django's `settings` fixture take effect at once. A host that sets
nothing gets the defaults below, the same ones awaken_project/settings.py falls back to when the
environment is silent (tests/mailbox_app/test_conf.py holds both to that). Parsing the environment
is the project's job; the apps only read values.

    from mailbox_app.conf import awaken_settings
    awaken_settings.MAILBOX.lease_ms        # settings.AWAKEN_MAILBOX, else MailboxConfig()

An unknown name is an AttributeError naming it (and a mypy error: every setting is declared here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from django.conf import settings

from mailbox_app.contract.budgets import TokenBudgets
from mailbox_app.contract.config import (
    DEFAULT_ALLOWED_NETWORKS,
    ClaimPolicy,
    MailboxConfig,
    Network,
    parse_networks,
)
from mailbox_app.contract.inbox import InboxPolicy

PREFIX = "AWAKEN_"
T = TypeVar("T")


class Setting(Generic[T]):
    """One setting: read `settings.AWAKEN_<attribute name>` live, else the default (a fresh copy for a
    mutable default, from its factory)."""

    def __init__(self, default: T | None = None, *, factory: Callable[[], T] | None = None) -> None:
        if (default is None) == (factory is None):
            raise TypeError("give exactly one of a default or a factory")
        self._default = default
        self._factory = factory
        self.name = ""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @property
    def setting_name(self) -> str:
        return PREFIX + self.name

    def default(self) -> T:
        if self._factory is not None:
            return self._factory()
        assert self._default is not None
        return self._default

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Setting[T]: ...
    @overload
    def __get__(self, instance: AwakenSettings, owner: type[Any]) -> T: ...
    def __get__(self, instance: AwakenSettings | None, owner: type[Any]) -> Setting[T] | T:
        if instance is None:
            return self
        try:
            value: T = getattr(settings, self.setting_name)
        except AttributeError:
            return self.default()
        return value


class AwakenSettings:
    """Every setting mailbox_app and runs_app read. Comments say what each does; the README's
    configuration table lists the environment variables awaken_project parses into them."""

    # lease, sweep, GC and retry (mailbox_app/contract/config.py)
    MAILBOX: Setting[MailboxConfig] = Setting(MailboxConfig())
    # fairness across owners and concurrency limits (`claim_policy()` below)
    CLAIM_POLICY: Setting[ClaimPolicy] = Setting(ClaimPolicy())
    # token budgets per owner and per agent, checked where runs are admitted (`token_budgets()` below)
    TOKEN_BUDGETS: Setting[TokenBudgets] = Setting(TokenBudgets())
    # the run store the mailbox drives (mailbox_app/store/ports.py): a dotted module path
    RUN_STORE: Setting[str] = Setting("runs_app.store")
    # extra agents {"agent_id": "dotted.path.to.ExecutorClass"}; `echo` is built in
    AGENTS: Setting[dict[str, str]] = Setting(factory=dict)
    # Redis for locks, live commands and event streams
    REDIS_URL: Setting[str] = Setting("redis://127.0.0.1:6379/0")
    LIVE_ACK_TIMEOUT_MS: Setting[int] = Setting(500)
    # how long a suspended run holds its claim waiting for a live decision before ending `waiting`
    LIVE_SUSPEND_HOLD_MS: Setting[int] = Setting(15_000)
    REMOTE_CANCEL_WAIT_MS: Setting[int] = Setting(5_000)
    # an idle SSE stream sends a keep-alive comment this often
    SSE_KEEPALIVE_MS: Setting[int] = Setting(15_000)
    # a run's event stream keeps at least this many events (the oldest are trimmed; docs/streams.md)
    EVENTS_MAX_PER_RUN: Setting[int] = Setting(100_000)
    # and lives this long after its last event
    EVENTS_TTL_MS: Setting[int] = Setting(86_400_000)
    # how long an Idempotency-Key replays its first answer
    IDEMPOTENCY_TTL_MS: Setting[int] = Setting(86_400_000)
    # threads idle longer than this are deleted by the mailbox GC; 0: never
    THREAD_TTL_MS: Setting[int] = Setting(0)
    # at most this many rows each GC purge removes per tick
    GC_MAX_PER_TICK: Setting[int] = Setting(10_000)
    # each run activation's time budget unless a submit's `timeout_s` says otherwise
    RUN_TIMEOUT_MS: Setting[int] = Setting(3_600_000)
    DISPATCH_SIGNAL_NACK_BASE_DELAY_MS: Setting[int] = Setting(500)
    DISPATCH_SIGNAL_NACK_MAX_DELAY_MS: Setting[int] = Setting(30_000)
    STARTUP_RECOVERY_MAX_ATTEMPTS: Setting[int] = Setting(3)
    STARTUP_RECOVERY_RETRY_DELAY_MS: Setting[int] = Setting(250)
    # test hook: a worker os._exit()s at this named step (after_claim, mid_run, after_result); "": none
    FAULT_POINT: Setting[str] = Setting("")
    # webhooks (mailbox_app/webhooks/outbox.py): the default target ("": none), the HMAC secret ("": unsigned)
    WEBHOOK_URL: Setting[str] = Setting("")
    WEBHOOK_SECRET: Setting[str] = Setting("")
    WEBHOOK_ALLOW_PRIVATE: Setting[bool] = Setting(False)
    WEBHOOK_MAX_ATTEMPTS: Setting[int] = Setting(10)
    WEBHOOK_RETRY_DELAY_MS: Setting[int] = Setting(1_000)
    WEBHOOK_MAX_RETRY_DELAY_MS: Setting[int] = Setting(600_000)
    WEBHOOK_TIMEOUT_MS: Setting[int] = Setting(5_000)
    # GET /metrics (mailbox_app/observability/view.py): a bearer token ("": none works), the networks that
    # may scrape without one, and the directory of per-service multiprocess dirs ("": the process's own)
    METRICS_TOKEN: Setting[str] = Setting("")
    METRICS_ALLOWED_NETWORKS: Setting[tuple[Network, ...]] = Setting(
        parse_networks("AWAKEN_METRICS_ALLOWED_NETWORKS", DEFAULT_ALLOWED_NETWORKS)
    )
    METRICS_DIR: Setting[str] = Setting("")
    # the API's token cache (runs_app/api/auth.py): how long a token is trusted without a query (0: no
    # cache), and how many tokens one process keeps
    AUTH_CACHE_TTL_MS: Setting[int] = Setting(60_000)
    AUTH_CACHE_MAX_ENTRIES: Setting[int] = Setting(10_000)
    # the longest Celery countdown a doorbell is sent with; a later ring is left to the sweep
    # (mailbox_app/realtime/doorbells.py); keep it under half the broker's visibility timeout
    DOORBELL_MAX_COUNTDOWN_MS: Setting[int] = Setting(300_000)
    # the inbox policy of a thread that sets none (docs/inbox.md): each agent's default by agent id, else
    # the project's (None: a thread without a policy of its own has none)
    INBOX_AGENT_DEFAULTS: Setting[dict[str, InboxPolicy]] = Setting(factory=dict)
    INBOX_DEFAULT: Setting[InboxPolicy | None] = Setting(factory=lambda: None)

    @classmethod
    def declared(cls) -> dict[str, Setting[Any]]:
        """Every setting by its name (without the prefix)."""
        return {name: value for name, value in vars(cls).items() if isinstance(value, Setting)}

    if not TYPE_CHECKING:  # (so that mypy still reports an undeclared name)

        def __getattr__(self, name: str) -> Any:  # only reached for a name not declared above
            raise AttributeError(f"awaken_settings has no setting {name!r} (no {PREFIX}{name} is read)")


awaken_settings = AwakenSettings()

DEFAULT_POLICY = ClaimPolicy()


def claim_policy() -> ClaimPolicy:
    """Who may be claimed next across threads: fairness between owners and concurrency limits.

    Within a thread the order is the reference's (priority, then created). Across threads, a worker that
    finishes an attempt claims the head of the thread whose owner was served longest ago (round-robin by
    owner, `mailbox_fair_group`), so one owner's backlog cannot delay every other owner's next run.

    Limits count claimed dispatches in PostgreSQL at claim time: the claim transaction first takes a
    transaction-scoped advisory lock per limited scope (global, the agent, the owner) and then claims
    with the count in its condition, so two workers can never exceed a limit. Unlimited agents take no
    lock. Lock order everywhere: the thread's epoch row, then the advisory locks in a fixed order.
    The policy (`ClaimPolicy`, parsed from `AWAKEN_FAIRNESS`, `AWAKEN_MAX_ACTIVE_RUNS`,
    `AWAKEN_AGENT_LIMITS`, `AWAKEN_OWNER_MAX_ACTIVE_RUNS`, `AWAKEN_UNSTARTED_CLAIM_GRACE_MS`) is in
    mailbox_app/contract/config.py; the claims that apply it are in mailbox_app/store/claims.py."""
    policy = awaken_settings.CLAIM_POLICY
    return policy if isinstance(policy, ClaimPolicy) else DEFAULT_POLICY


DISABLED_BUDGETS = TokenBudgets()


def token_budgets() -> TokenBudgets:
    """The token budgets (`AWAKEN_TOKEN_BUDGETS`, mailbox_app/contract/budgets.py): disabled unless the
    variable is set. Enabled, every claim admits a run only while its owner's and its agent's windows
    have tokens left (the setting's defaults, or the admin's rows) and reserves an estimate for it;
    the attempt's finish charges what it used instead (mailbox_app/store/budgets.sql)."""
    budgets = awaken_settings.TOKEN_BUDGETS
    return budgets if isinstance(budgets, TokenBudgets) else DISABLED_BUDGETS
