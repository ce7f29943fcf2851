"""The dispatch queue tables. The constraints here make illegal dispatch states unrepresentable."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from mailbox_app.contract.inbox import ScheduleIfBusy
from mailbox_app.contract.mailbox import TERMINAL_STATUSES, DispatchStatus

_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)
_CLAIMED = DispatchStatus.CLAIMED.value
_QUEUED = DispatchStatus.QUEUED.value


class ThreadEpoch(models.Model):
    """Per-thread dispatch epoch (spec §1.4). Only `interrupt` increments it; the row is also the
    per-thread lock that serializes claim and interrupt."""

    thread_id = models.CharField(max_length=128, primary_key=True)
    current_epoch = models.BigIntegerField(default=0)
    # who the thread's work is fair to (the thread's owner; "" when none): claims rotate across owners
    owner_key = models.CharField(max_length=64, default="", db_default="", blank=True)

    class Meta:
        db_table = "mailbox_thread_epoch"
        constraints = [models.CheckConstraint(condition=Q(current_epoch__gte=0), name="epoch_non_negative")]

    def __str__(self) -> str:
        return f"{self.thread_id}@{self.current_epoch}"


class DispatchQuerySet(models.QuerySet["Dispatch"]):
    def queued(self) -> DispatchQuerySet:
        return self.filter(status=_QUEUED)

    def claimed(self) -> DispatchQuerySet:
        return self.filter(status=_CLAIMED)


class Dispatch(models.Model):
    """One durable activation attempt of a run (the reference's `RunDispatch`). Times are Unix ms."""

    dispatch_id = models.CharField(max_length=64, primary_key=True)
    thread_id = models.CharField(max_length=128)
    run_id = models.CharField(max_length=64)
    priority = models.SmallIntegerField(default=128)
    dedupe_key = models.CharField(max_length=255, null=True, blank=True)
    dispatch_epoch = models.BigIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=[(s.value, s.value) for s in DispatchStatus], default=_QUEUED
    )
    available_at = models.BigIntegerField(default=0)
    attempt_count = models.IntegerField(default=0)
    max_attempts = models.IntegerField(default=5)
    last_error = models.TextField(null=True, blank=True)
    claim_token = models.CharField(max_length=64, null=True, blank=True)
    claimed_by = models.CharField(max_length=255, null=True, blank=True)
    lease_until = models.BigIntegerField(null=True, blank=True)
    # runtime-trace projection
    dispatch_instance_id = models.CharField(max_length=64, null=True, blank=True)
    run_status = models.CharField(max_length=16, null=True, blank=True)
    termination = models.JSONField(null=True, blank=True)
    run_response = models.TextField(null=True, blank=True)
    run_error = models.TextField(null=True, blank=True)
    completed_at = models.BigIntegerField(null=True, blank=True)
    created_at = models.BigIntegerField()
    updated_at = models.BigIntegerField()
    # the input this dispatch delivers (a RunRequestSnapshot), read by reconstruct (spec §7.7 fix)
    request = models.JSONField(null=True, blank=True)
    # the agent of the run it activates: per-agent concurrency limits count claimed rows by it
    agent_key = models.CharField(max_length=128, default="", db_default="", blank=True)

    objects = DispatchQuerySet.as_manager()

    class Meta:
        db_table = "mailbox_dispatch"
        verbose_name_plural = "dispatches"
        ordering = ["priority", "created_at", "dispatch_id"]
        indexes = [
            # claim: the thread's queued rows in claim order
            models.Index(
                fields=["thread_id", "priority", "created_at"],
                condition=Q(status=_QUEUED),
                name="dispatch_claim_idx",
            ),
            # list_dispatches / per-thread reads
            models.Index(fields=["thread_id", "priority", "created_at"], name="dispatch_thread_idx"),
            # lease sweep
            models.Index(fields=["lease_until"], condition=Q(status=_CLAIMED), name="dispatch_lease_idx"),
            # re-drive scan of claimable work
            models.Index(fields=["available_at"], condition=Q(status=_QUEUED), name="dispatch_available_idx"),
            # terminal listing and GC
            models.Index(
                fields=["updated_at", "created_at", "dispatch_id"],
                condition=Q(status__in=_TERMINAL),
                name="dispatch_terminal_idx",
            ),
            models.Index(fields=["run_id"], name="dispatch_run_idx"),
            # concurrency limits: claimed rows counted by agent
            models.Index(
                fields=["agent_key"], condition=Q(status=_CLAIMED), name="dispatch_claimed_agent_idx"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["thread_id"], condition=Q(status=_CLAIMED), name="one_claimed_per_thread"
            ),
            models.UniqueConstraint(
                fields=["thread_id", "dedupe_key"],
                condition=Q(status__in=[_QUEUED, _CLAIMED], dedupe_key__isnull=False),
                name="dedupe_key_per_thread_active",
            ),
            models.CheckConstraint(
                condition=Q(status__in=[s.value for s in DispatchStatus]), name="dispatch_status_valid"
            ),
            models.CheckConstraint(
                condition=(
                    Q(
                        status=_CLAIMED,
                        claim_token__isnull=False,
                        claimed_by__isnull=False,
                        lease_until__isnull=False,
                    )
                    | (
                        ~Q(status=_CLAIMED)
                        & Q(claim_token__isnull=True, claimed_by__isnull=True, lease_until__isnull=True)
                    )
                ),
                name="claim_fields_iff_claimed",
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=0, priority__lte=255), name="dispatch_priority_u8"
            ),
            models.CheckConstraint(condition=Q(attempt_count__gte=0), name="attempts_non_negative"),
            models.CheckConstraint(condition=Q(max_attempts__gte=1), name="max_attempts_positive"),
            models.CheckConstraint(condition=Q(dispatch_epoch__gte=0), name="dispatch_epoch_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.dispatch_id} ({self.status})"


# --- webhooks (mailbox_app/webhooks/outbox.py) -------------------------------------------------------------


class WebhookSubscription(models.Model):
    """The webhook a submit asked for: written in the submit's transaction, joined by the transaction
    that ends or suspends the run to write its outbox row."""

    run_id = models.CharField(max_length=64, primary_key=True)
    url = models.CharField(max_length=2048)
    # the submitter: deliveries to `url` are signed with their secret (mailbox_app/webhooks/secret_store.py)
    owner_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.BigIntegerField()

    class Meta:
        db_table = "mailbox_webhook_subscription"

    def __str__(self) -> str:
        return f"{self.run_id} -> {self.url}"


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after AWAKEN_WEBHOOK_MAX_ATTEMPTS (or the target was refused)


_PENDING = WebhookDeliveryStatus.PENDING.value


class WebhookDelivery(models.Model):
    """One row of the webhook outbox: an event of a run (finished / waiting) to POST to `url`.

    Written in the transaction that ends or suspends the run; `delivery_id` is the idempotency id every
    attempt carries. `payload` is the run record as that transaction wrote it. Times are Unix ms."""

    delivery_id = models.CharField(max_length=64, primary_key=True)
    run_id = models.CharField(max_length=64)
    thread_id = models.CharField(max_length=128)
    event = models.CharField(max_length=32)
    url = models.CharField(max_length=2048)
    # the subscription's owner (whose secret signs it); NULL for a row to AWAKEN_WEBHOOK_URL
    owner_id = models.BigIntegerField(null=True, blank=True)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=WebhookDeliveryStatus.choices, default=_PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.BigIntegerField()
    # an attempt in flight holds the row until then (a worker that died mid-attempt: re-driven after it)
    locked_until = models.BigIntegerField(null=True, blank=True)
    last_error = models.TextField(null=True, blank=True)
    last_status_code = models.IntegerField(null=True, blank=True)
    created_at = models.BigIntegerField()
    updated_at = models.BigIntegerField()
    delivered_at = models.BigIntegerField(null=True, blank=True)

    class Meta:
        db_table = "mailbox_webhook_outbox"
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # re-drive: pending rows by due time
            models.Index(fields=["next_attempt_at"], condition=Q(status=_PENDING), name="webhook_due_idx"),
            # GC of delivered rows
            models.Index(
                fields=["delivered_at"],
                condition=Q(status=WebhookDeliveryStatus.DELIVERED.value),
                name="webhook_delivered_idx",
            ),
            models.Index(fields=["run_id"], name="webhook_run_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=WebhookDeliveryStatus.values), name="webhook_status_valid"
            ),
            models.CheckConstraint(condition=Q(attempts__gte=0), name="webhook_attempts_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.delivery_id} {self.event} ({self.status})"


class WebhookSecret(models.Model):
    """A user's webhook signing secret (mailbox_app/webhooks/secret_store.py): deliveries to the URLs their
    runs subscribe are signed with it, and with the previous one until `previous_valid_until` after a
    rotation. Shown once, by the request that created it; never registered in the admin."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="+"
    )
    secret = models.CharField(max_length=128)
    previous_secret = models.CharField(max_length=128, null=True, blank=True)
    previous_valid_until = models.BigIntegerField(null=True, blank=True)
    created_at = models.BigIntegerField()

    class Meta:
        db_table = "mailbox_webhook_secret"

    def __str__(self) -> str:
        return f"webhook secret of user {self.pk}"  # never the secret itself


class FairGroup(models.Model):
    """When each owner was last served a claim: claims across threads go to the owner served longest
    ago first (round-robin by owner, like Hatchet's GROUP_ROUND_ROBIN); within a thread the order stays
    priority, then created."""

    owner_key = models.CharField(max_length=64, primary_key=True)
    served_at = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        db_table = "mailbox_fair_group"

    def __str__(self) -> str:
        return f"{self.owner_key or '(no owner)'} served at {self.served_at}"


# --- the inbox: pauses, debounce windows, schedules (docs/inbox.md) ---------------------------------------

_PAUSE_SCOPES = ["thread", "agent", "all"]


class Pause(models.Model):
    """A pause of one scope: a thread (`key` its id), an agent (`key` its id) or everything (`key` "").
    While a row exists no claim takes a dispatch it covers: the claims check this table in their own
    statement (mailbox_app/store/claims.sql, claims.py), so a pause survives every restart. Submits are
    still accepted and queued; deleting the row (a resume) and ringing the threads lets them run."""

    scope = models.CharField(max_length=8, choices=[(s, s) for s in _PAUSE_SCOPES])
    key = models.CharField(max_length=128, default="", blank=True)
    paused_by = models.CharField(max_length=255)
    # an operator's pause (a command, the admin) is resumed by an operator only, never through the API
    by_operator = models.BooleanField(default=False)
    reason = models.TextField(default="", blank=True)
    created_at = models.BigIntegerField()

    class Meta:
        db_table = "mailbox_pause"
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="pause_scope_key_unique"),
            models.CheckConstraint(condition=Q(scope__in=_PAUSE_SCOPES), name="pause_scope_valid"),
            models.CheckConstraint(
                condition=Q(scope="all", key="") | (~Q(scope="all") & ~Q(key="")), name="pause_key_iff_scoped"
            ),
        ]

    def __str__(self) -> str:
        return f"paused {self.scope}" + (f" {self.key}" if self.key else "")


class InboxWindow(models.Model):
    """The thread's open debounce window: the queued dispatch the next message coalesces into, while no
    claim has taken it (mailbox_app/store/inbox.py). One row per thread, replaced when a window opens;
    a row whose dispatch was claimed or ended is closed (the GC removes it)."""

    thread_id = models.CharField(max_length=128, primary_key=True)
    dispatch_id = models.CharField(max_length=64)
    opened_at = models.BigIntegerField()
    last_message_at = models.BigIntegerField()
    messages = models.IntegerField(default=0)

    class Meta:
        db_table = "mailbox_inbox_window"

    def __str__(self) -> str:
        return f"{self.thread_id} -> {self.dispatch_id}"


class Schedule(models.Model):
    """A thread's schedule (mailbox_app/services/schedules.py): django-celery-beat's `PeriodicTask` fires
    `mailbox.fire_schedule`, which submits a background run on the thread as its owner. `next_run_at` is
    the slot the next firing takes (each slot is fired at most once, in the transaction of its submit);
    times are Unix ms."""

    schedule_id = models.CharField(max_length=64, primary_key=True)
    thread_id = models.CharField(max_length=128, db_index=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # deleting the beat row (in django-celery-beat's admin) deletes the schedule
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", on_delete=models.CASCADE, related_name="+"
    )
    cron = models.CharField(max_length=255, null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    interval_s = models.IntegerField(null=True, blank=True)
    messages = models.JSONField()
    metadata = models.JSONField(default=dict, blank=True)
    agent_id = models.CharField(max_length=128, null=True, blank=True)
    if_busy = models.CharField(
        max_length=8, choices=[(v.value, v.value) for v in ScheduleIfBusy], default=ScheduleIfBusy.SKIP.value
    )
    enabled = models.BooleanField(default=True)
    anchor_at = models.BigIntegerField()  # an interval's slots are anchor_at + k * interval
    next_run_at = models.BigIntegerField()
    last_fired_at = models.BigIntegerField(null=True, blank=True)  # the slot of the last firing
    last_outcome = models.CharField(max_length=32, default="", blank=True)
    last_dispatch_id = models.CharField(max_length=64, null=True, blank=True)
    last_run_id = models.CharField(max_length=64, null=True, blank=True)
    firings = models.IntegerField(default=0)
    created_at = models.BigIntegerField()
    updated_at = models.BigIntegerField()

    class Meta:
        db_table = "mailbox_schedule"
        ordering = ["created_at", "schedule_id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(cron__isnull=False, interval_s__isnull=True) | Q(cron__isnull=True, interval_s__gte=1)
                ),
                name="schedule_cron_xor_interval",
            ),
            models.CheckConstraint(
                condition=Q(if_busy__in=[v.value for v in ScheduleIfBusy]), name="schedule_if_busy_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} on {self.thread_id}"


BUDGET_SCOPES = ("owner", "agent")


class TokenBudget(models.Model):
    """An override of `AWAKEN_TOKEN_BUDGETS` for one owner or one agent (edited in the admin): how many
    tokens its runs may use per window. The claims read these rows themselves (mailbox_app/store/
    budgets.sql); without a row the setting's default for the scope applies."""

    scope = models.CharField(max_length=8, choices=[(s, s) for s in BUDGET_SCOPES])
    # the owner's key (the user's id, as the dispatch queue keys owners) or the agent id
    key = models.CharField(max_length=128)
    tokens = models.BigIntegerField(help_text="tokens (input + output) its runs may use per window")
    window_s = models.IntegerField(default=60, help_text="the window's length in seconds")
    note = models.CharField(max_length=255, blank=True, default="", db_default="")

    class Meta:
        db_table = "mailbox_token_budget"
        verbose_name = "token budget"
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="token_budget_scope_key_unique"),
            models.CheckConstraint(condition=Q(scope__in=BUDGET_SCOPES), name="token_budget_scope_valid"),
            models.CheckConstraint(condition=Q(tokens__gte=0), name="token_budget_tokens_gte_0"),
            models.CheckConstraint(
                condition=Q(window_s__gte=1, window_s__lte=2_678_400), name="token_budget_window_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.key}: {self.tokens} tokens / {self.window_s} s"


class TokenCharge(models.Model):
    """One claim's charge against one budget's window: the reservation the claim made (its estimate),
    replaced by the attempt's reported usage at its finish (`settled_at`). A claim whose attempt never
    finishes (a crash, a lost lease) keeps its reservation as its charge. The window's usage is the sum
    of its charges; rows are deleted by the GC once their window has ended."""

    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(max_length=8)
    key = models.CharField(max_length=128)
    window_start = models.BigIntegerField()
    window_end = models.BigIntegerField()
    dispatch_id = models.CharField(max_length=64)
    claim_token = models.CharField(max_length=64)
    reserved = models.BigIntegerField()
    tokens = models.BigIntegerField()
    created_at = models.BigIntegerField()
    settled_at = models.BigIntegerField(null=True, blank=True)

    class Meta:
        db_table = "mailbox_token_charge"
        indexes = [
            # a claim's admission: the window's sum for one scope
            models.Index(fields=["scope", "key", "window_start"], name="token_charge_window_idx"),
            # the finish's reconcile of its own claim
            models.Index(fields=["dispatch_id"], name="token_charge_dispatch_idx"),
            # the fair claim's spent scopes (windows open now) and the GC (windows ended)
            models.Index(fields=["window_end"], name="token_charge_end_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(tokens__gte=0, reserved__gte=0), name="token_charge_gte_0")
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.key} @ {self.window_start}: {self.tokens}"
