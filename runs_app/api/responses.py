"""Typed response bodies of the run, control, mailbox and message routes, for the OpenAPI schema (the views
render records with `serializers.run_json` / `dispatch_json` / `message_json` and these describe them),
and the `responses=` of each operation: its success bodies, its event stream, its error shape."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

from mailbox_app.contract.inbox import InboxOutcome
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.services.mailbox import SubmitStatus
from runs_app.api.pagination import page_out
from runs_app.api.run_serializers import RUN_STATUSES, RunOut
from runs_app.api.thread_serializers import ErrorOut

SUBMIT_STATUSES = tuple(s.value for s in SubmitStatus)
INBOX_OUTCOMES = tuple(o.value for o in InboxOutcome)
DISPATCH_STATUSES = tuple(s.value for s in DispatchStatus)
EVENT_STREAM = "text/event-stream"
JSON = "application/json"
CANCEL_REQUESTED = ("cancel_requested",)  # shared by three answers: one named enum (ENUM_NAME_OVERRIDES)
DECISION_SUBMITTED = ("decision_submitted",)
DELIVERED = ("live", "queued")


class SubmitOut(serializers.Serializer[dict[str, Any]]):
    """A submit's dispatch and run: `running` when it was claimed at once, else `queued`. When the
    thread's inbox decided (docs/inbox.md), also what became of the messages and when they start."""

    dispatch_id = serializers.CharField()
    run_id = serializers.CharField()
    thread_id = serializers.CharField()
    status = serializers.ChoiceField(choices=SUBMIT_STATUSES)
    delivered = serializers.ChoiceField(
        choices=DELIVERED,
        required=False,
        help_text="live input only (mode live_then_queue or steer): `live` when the running run "
        "acknowledged the messages (it reads them), `queued` when they became a dispatch of their own",
    )
    inbox = serializers.ChoiceField(
        choices=INBOX_OUTCOMES,
        required=False,
        help_text=(
            "(the inbox's answers only) coalesced: joined the input of a dispatch not claimed yet; steered: "
            "delivered into the running run; queued: the first input of a new dispatch"
        ),
    )
    starts_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="(the inbox's answers only) when the dispatch becomes claimable; null: steered or running",
    )


class RunInputsOut(serializers.Serializer[dict[str, Any]]):
    dispatch_id = serializers.CharField()
    run_id = serializers.CharField(help_text="the run the input went to (the same run when it resumed)")
    thread_id = serializers.CharField()
    status = serializers.ChoiceField(choices=["inputs_accepted"])
    run_status = serializers.ChoiceField(choices=SUBMIT_STATUSES)
    delivered = serializers.ChoiceField(
        choices=DELIVERED,
        required=False,
        help_text="live modes only: `live` when this run acknowledged the messages (it reads them), "
        "`queued` when they were queued as a dispatch of their own",
    )


class RunCancelOut(serializers.Serializer[dict[str, Any]]):
    status = serializers.ChoiceField(choices=CANCEL_REQUESTED)
    run_id = serializers.CharField()


class ThreadCancelOut(serializers.Serializer[dict[str, Any]]):
    status = serializers.ChoiceField(choices=CANCEL_REQUESTED)
    thread_id = serializers.CharField()


class DispatchCancelOut(serializers.Serializer[dict[str, Any]]):
    status = serializers.ChoiceField(choices=CANCEL_REQUESTED)
    dispatch_id = serializers.CharField()


class InterruptOut(serializers.Serializer[dict[str, Any]]):
    status = serializers.ChoiceField(choices=["interrupt_requested"])
    thread_id = serializers.CharField()
    superseded_dispatches = serializers.IntegerField(help_text="queued dispatches superseded")
    active_dispatch_id = serializers.CharField(allow_null=True, help_text="the claim asked to stop")


class RunDecisionOut(serializers.Serializer[dict[str, Any]]):
    status = serializers.ChoiceField(choices=DECISION_SUBMITTED)
    run_id = serializers.CharField()
    tool_call_id = serializers.CharField()


class ThreadDecisionOut(serializers.Serializer[dict[str, Any]]):
    status = serializers.ChoiceField(choices=DECISION_SUBMITTED)
    thread_id = serializers.CharField()
    tool_call_id = serializers.CharField()


class ActiveRunOut(serializers.Serializer[dict[str, Any]]):
    active_run = RunOut(allow_null=True)


class DispatchOut(serializers.Serializer[dict[str, Any]]):
    """A dispatch (`serializers.dispatch_json`, never its claim token): times are ISO-8601 UTC."""

    dispatch_id = serializers.CharField()
    thread_id = serializers.CharField()
    run_id = serializers.CharField()
    priority = serializers.IntegerField()
    dedupe_key = serializers.CharField(allow_null=True)
    dispatch_epoch = serializers.IntegerField()
    status = serializers.ChoiceField(choices=DISPATCH_STATUSES)
    available_at = serializers.DateTimeField()
    attempt_count = serializers.IntegerField()
    max_attempts = serializers.IntegerField()
    last_error = serializers.CharField(allow_null=True)
    claimed_by = serializers.CharField(allow_null=True)
    lease_until = serializers.DateTimeField(allow_null=True)
    dispatch_instance_id = serializers.CharField(allow_null=True)
    run_status = serializers.ChoiceField(choices=RUN_STATUSES, allow_null=True)
    termination = serializers.JSONField(allow_null=True)
    run_response = serializers.CharField(allow_null=True)
    run_error = serializers.CharField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    agent_key = serializers.CharField()


DispatchPageOut = page_out("DispatchPageOut", DispatchOut(many=True), "A page of a thread's dispatches.")


class ToolCallOut(serializers.Serializer[dict[str, Any]]):
    id = serializers.CharField()
    name = serializers.CharField()
    arguments = serializers.DictField(child=serializers.JSONField())


def _message_fields() -> dict[str, serializers.Field[Any, Any, Any, Any]]:
    # a plain dict, not a Serializer subclass: `partial` is also the name of Serializer's own attribute
    return {
        "seq": serializers.IntegerField(),
        "message_id": serializers.CharField(),
        "role": serializers.CharField(help_text="user, assistant, system or tool"),
        "content": serializers.CharField(help_text="the text blocks joined"),
        "content_blocks": serializers.ListField(child=serializers.DictField(child=serializers.JSONField())),
        "visibility": serializers.CharField(help_text="all (public) or internal"),
        "run_id": serializers.CharField(allow_null=True, help_text="the run that produced it"),
        "created_at": serializers.DateTimeField(),
        "tool_calls": ToolCallOut(many=True, allow_null=True),
        "tool_call_id": serializers.CharField(allow_null=True),
        "partial": serializers.BooleanField(help_text="the output of a run that ended early"),
    }


MessagePageOut = page_out(
    "MessagePageOut",
    inline_serializer("MessageOut", fields=_message_fields(), many=True),
    "A page of the thread's log (`serializers.message_json` each).",
)


def event_stream(description: str) -> OpenApiResponse:
    """A `text/event-stream` answer (server-sent events: `id`, `event`, `data` lines)."""
    return OpenApiResponse(response=OpenApiTypes.STR, description=description)


def errors(*codes: int) -> dict[int | tuple[int, str], Any]:
    """The error shape `{error, code, field?}` (always JSON) for each of `codes`, as `extend_schema`
    responses entries."""
    return {(code, JSON): ErrorOut for code in codes}
