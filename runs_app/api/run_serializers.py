"""Typed bodies of the run surface for the OpenAPI schema: the run as `run_json` renders it, a page of
runs, the wait request, and the 202 answer of a wait or join that ran out of time."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from mailbox_app.contract.lifecycle import RunStatus
from runs_app.api.pagination import page_out
from runs_app.api.run_options import SecondsField
from runs_app.api.serializers import ThreadRunSubmitIn

DEFAULT_WAIT_S = 30.0
MAX_WAIT_S = 300.0
RUN_STATUSES = tuple(s.value for s in RunStatus)


class TerminationOut(serializers.Serializer[dict[str, Any]]):
    type = serializers.CharField(help_text="natural_end, cancelled, timeout, error, suspended, ...")
    value = serializers.JSONField(allow_null=True)


class AttemptUsageOut(serializers.Serializer[dict[str, Any]]):
    dispatch_id = serializers.CharField()
    attempt = serializers.IntegerField(help_text="the dispatch's attempt, 1 = its first")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = serializers.FloatField(allow_null=True)
    ended = serializers.ChoiceField(
        choices=["finished", "lost"],
        help_text="finished: the attempt that wrote the run at its finish; lost: an attempt that ended "
        "without one (a crash, a lost lease, a retried failure), known from the steps it recorded",
    )
    recorded_at = serializers.DateTimeField()


class UsageOut(serializers.Serializer[dict[str, Any]]):
    """What the run used: the sums over its attempts, and each attempt's (words as tokens for `echo`)."""

    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = serializers.FloatField(allow_null=True, help_text="null: no attempt reported a cost")
    attempts = AttemptUsageOut(many=True)


class RunOut(serializers.Serializer[dict[str, Any]]):
    """A run (`serializers.run_json`): times are ISO-8601 UTC with milliseconds."""

    run_id = serializers.CharField()
    thread_id = serializers.CharField()
    agent_id = serializers.CharField()
    parent_run_id = serializers.CharField(allow_null=True)
    request = serializers.JSONField(allow_null=True)
    input = serializers.JSONField(allow_null=True)
    output = serializers.JSONField(allow_null=True)
    status = serializers.ChoiceField(choices=RUN_STATUSES)
    termination_reason = TerminationOut(allow_null=True)
    final_output = serializers.CharField(allow_null=True)
    error_payload = serializers.JSONField(allow_null=True)
    dispatch_id = serializers.CharField(allow_null=True)
    session_id = serializers.CharField(allow_null=True)
    transport_request_id = serializers.CharField(allow_null=True)
    waiting = serializers.JSONField(allow_null=True)
    outcome = serializers.JSONField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()
    steps = serializers.IntegerField()
    input_tokens = serializers.IntegerField(help_text="= usage.input_tokens")
    output_tokens = serializers.IntegerField(help_text="= usage.output_tokens")
    usage = UsageOut()
    state = serializers.JSONField(allow_null=True)
    metadata = serializers.DictField(child=serializers.JSONField())
    timeout_ms = serializers.IntegerField(allow_null=True, help_text="each activation's time budget")
    deadline_at = serializers.DateTimeField(allow_null=True, help_text="the current activation's deadline")


RunPageOut = page_out("RunPageOut", RunOut(many=True), "A page of runs.")


class RunWaitIn(ThreadRunSubmitIn):
    """POST threads/{id}/runs/wait: a submit (as threads/{id}/runs, no streaming) and how long to wait."""

    stream = None  # type: ignore[assignment]  # the answer is the run, not its events
    wait_timeout_s = SecondsField(
        minimum=0,
        maximum=MAX_WAIT_S,
        exclusive=True,
        help_text=f"how long to wait for the run (default {DEFAULT_WAIT_S:g} s): then 202",
    )


class RunPendingOut(serializers.Serializer[dict[str, Any]]):
    """202: the run has not finished or suspended within the wait; join it (GET runs/{id}/join)."""

    run_id = serializers.CharField()
    thread_id = serializers.CharField()
    dispatch_id = serializers.CharField(required=False, help_text="the submit's dispatch (wait only)")
    status = serializers.ChoiceField(choices=RUN_STATUSES, help_text="the run's status when the wait ended")
    detail = serializers.CharField()
