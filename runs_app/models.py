"""Threads, runs and the append-only message log (the reference's `ThreadRunStore`). Times are Unix ms."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q

from mailbox_app.contract.lifecycle import RunStatus

RUN_STATUSES = [s.value for s in RunStatus]
ROLES = ["system", "user", "assistant", "tool"]
VISIBILITIES = ["all", "internal"]


class Thread(models.Model):
    id = models.CharField(max_length=128, primary_key=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="threads"
    )
    resource_id = models.CharField(max_length=255, null=True, blank=True)
    parent_thread_id = models.CharField(max_length=128, null=True, blank=True)
    title = models.CharField(max_length=255, null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # the thread's inbox policy (mailbox_app/contract/inbox.py InboxPolicy as JSON); null: the defaults
    inbox = models.JSONField(null=True, blank=True)
    open_run_id = models.CharField(max_length=64, null=True, blank=True)
    active_run_id = models.CharField(max_length=64, null=True, blank=True)
    latest_run_id = models.CharField(max_length=64, null=True, blank=True)
    # Highest allocated message seq; bumped under this row's lock so seqs are gapless and unique.
    message_count = models.IntegerField(default=0)
    created_at = models.BigIntegerField()
    updated_at = models.BigIntegerField()

    class Meta:
        db_table = "runs_thread"
        ordering = ["-updated_at", "id"]
        indexes = [
            # POST threads/search: `metadata @> {...}` (jsonb_path_ops serves containment only, compactly)
            GinIndex(fields=["metadata"], opclasses=["jsonb_path_ops"], name="thread_metadata_gin"),
            # GET threads / search: a user's threads, most recently active first
            models.Index(fields=["owner", "-updated_at", "id"], name="thread_owner_updated_idx"),
            # GC: threads past AWAKEN_THREAD_TTL_MS, oldest activity first
            models.Index(fields=["updated_at"], name="thread_updated_idx"),
        ]
        constraints = [models.CheckConstraint(condition=Q(message_count__gte=0), name="message_count_gte_0")]

    def __str__(self) -> str:
        return self.id


class Run(models.Model):
    run_id = models.CharField(max_length=64, primary_key=True)
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="runs")
    agent_id = models.CharField(max_length=128, default="default")
    parent_run_id = models.CharField(max_length=64, null=True, blank=True)
    request = models.JSONField(null=True, blank=True)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=[(s, s) for s in RUN_STATUSES], default="created")
    termination_reason = models.JSONField(null=True, blank=True)
    final_output = models.TextField(null=True, blank=True)
    error_payload = models.JSONField(null=True, blank=True)
    dispatch_id = models.CharField(max_length=64, null=True, blank=True)
    session_id = models.CharField(max_length=64, null=True, blank=True)
    transport_request_id = models.CharField(max_length=128, null=True, blank=True)
    waiting = models.JSONField(null=True, blank=True)
    outcome = models.JSONField(null=True, blank=True)
    created_at = models.BigIntegerField()
    started_at = models.BigIntegerField(null=True, blank=True)
    finished_at = models.BigIntegerField(null=True, blank=True)
    updated_at = models.BigIntegerField()
    steps = models.IntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    # Summed over `usage_attempts` with the tokens above: what each attempt of the run reported
    # (mailbox_app/contract/usage.py). Database defaults, because the fused submit inserts runs in SQL.
    cost = models.FloatField(null=True, blank=True)
    usage_attempts = models.JSONField(
        default=list, db_default=models.Value([], models.JSONField()), blank=True
    )
    state = models.JSONField(null=True, blank=True)
    # The submitter's JSON object (bounded by the API), searched by containment (`@>`, GIN index).
    metadata = models.JSONField(default=dict, blank=True)
    # Each activation may run this long (null: unbounded); `deadline_at` is set when an activation
    # starts (a retry keeps it) and enforced by the worker and the sweep (mailbox_app/services/timeouts.py).
    timeout_ms = models.BigIntegerField(null=True, blank=True)
    deadline_at = models.BigIntegerField(null=True, blank=True)

    class Meta:
        db_table = "runs_run"
        ordering = ["created_at", "run_id"]
        indexes = [
            models.Index(fields=["thread", "-updated_at", "-created_at", "-run_id"], name="run_latest_idx"),
            models.Index(fields=["status", "created_at"], name="run_status_idx"),
            GinIndex(fields=["metadata"], name="run_metadata_gin", opclasses=["jsonb_path_ops"]),
            models.Index(
                fields=["deadline_at"], condition=Q(status="running"), name="run_running_deadline_idx"
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=RUN_STATUSES), name="run_status_valid"),
            models.CheckConstraint(
                condition=Q(steps__gte=0, input_tokens__gte=0, output_tokens__gte=0),
                name="run_counters_gte_0",
            ),
            models.CheckConstraint(
                condition=Q(timeout_ms__isnull=True) | Q(timeout_ms__gt=0), name="run_timeout_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} ({self.status})"


class Message(models.Model):
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="messages")
    seq = models.IntegerField()
    message_id = models.CharField(max_length=64)
    role = models.CharField(max_length=16, choices=[(r, r) for r in ROLES])
    content = models.JSONField(default=list)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=128, null=True, blank=True)
    visibility = models.CharField(max_length=16, choices=[(v, v) for v in VISIBILITIES], default="all")
    run_id = models.CharField(max_length=64, null=True, blank=True)
    step_index = models.IntegerField(null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    created_at = models.BigIntegerField()

    class Meta:
        db_table = "runs_message"
        ordering = ["thread", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["thread", "seq"], name="message_thread_seq_unique"),
            models.UniqueConstraint(fields=["thread", "message_id"], name="message_thread_id_unique"),
            models.CheckConstraint(condition=Q(seq__gte=1), name="message_seq_positive"),
            models.CheckConstraint(condition=Q(role__in=ROLES), name="message_role_valid"),
            models.CheckConstraint(condition=Q(visibility__in=VISIBILITIES), name="message_visibility_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.thread_id}#{self.seq}"


class IdempotencyRecord(models.Model):
    """The first answer to a submission carrying an idempotency key, replayed for retries of it. Written
    with its answer in the submission's transaction (runs_app/api/idempotency.py), so it always has one."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status_code = models.IntegerField()
    response = models.JSONField()
    created_at = models.BigIntegerField()

    class Meta:
        db_table = "runs_idempotency"
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_user_key_unique")]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created_idx")]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key}"


class RunStep(models.Model):
    """One completed step of a run's journal (mailbox_app/store/runs_tables/steps.py), written once per
    (run, key) by the attempt that completed it, fenced by its claim token; later attempts replay it
    instead of re-running."""

    # The database constraint (ON DELETE CASCADE) is added by migration 0004: a run deleted by any path,
    # ORM or SQL, takes its journal with it.
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="journal", db_constraint=False, db_index=False
    )  # indexed by the (run, key) unique constraint
    key = models.CharField(max_length=255)
    dispatch_id = models.CharField(max_length=64)
    session_id = models.CharField(max_length=64)
    attempt = models.IntegerField()  # the dispatch's attempt that recorded it, 1 = its first
    result = models.JSONField()
    messages = models.JSONField(null=True, blank=True)  # null: the step returned a bare value
    state = models.JSONField(null=True, blank=True)
    result_bytes = models.IntegerField()
    recorded_at = models.BigIntegerField()
    # What the step reported it cost (`StepOutput.usage`); zero / null when it reported nothing.
    input_tokens = models.BigIntegerField(default=0, db_default=0)
    output_tokens = models.BigIntegerField(default=0, db_default=0)
    cost = models.FloatField(null=True, blank=True)
    # A replayed run's journal starts with the steps of the run it replays (runs_app/services/fork.py):
    # those rows name that run here. They were paid for there: they count in neither run's usage twice.
    copied_from_run_id = models.CharField(max_length=64, null=True, blank=True)

    class Meta:
        db_table = "runs_step"
        ordering = ["run", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "key"], name="run_step_run_key_unique"),
            models.CheckConstraint(
                condition=Q(attempt__gte=1, result_bytes__gte=0), name="run_step_counters"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.key}"


class RunDecision(models.Model):
    """The one decision a run's suspended tool call takes (mailbox_app/store/runs_tables/decisions.py):
    written before a decision is delivered live, or in the transaction that queues the run's resume.
    The unique (run, tool call) is what makes a second decision, concurrent or later, `already_decided`."""

    # The database constraint (ON DELETE CASCADE) is added by migration 0009, as for RunStep.
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="decisions", db_constraint=False, db_index=False
    )  # indexed by the (run, tool_call_id) unique constraint
    tool_call_id = models.CharField(max_length=255)
    decision_id = models.CharField(max_length=64)
    action = models.CharField(max_length=32)
    # "live": handed to the worker holding the suspended run; "queued": a resume dispatch carries it
    via = models.CharField(max_length=8, choices=[("live", "live"), ("queued", "queued")])
    dispatch_id = models.CharField(max_length=64, null=True, blank=True)  # the resume that carries it
    decided_at = models.BigIntegerField()

    class Meta:
        db_table = "runs_decision"
        ordering = ["run", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "tool_call_id"], name="run_decision_once"),
            models.CheckConstraint(condition=Q(via__in=["live", "queued"]), name="run_decision_via"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.tool_call_id} {self.action}"
