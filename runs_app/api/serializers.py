"""Request validation (DRF serializers) and response shapes (plain dicts built from store records)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers

from mailbox_app.conf import awaken_settings
from mailbox_app.contract import wire
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.storage import RunRecord, ThreadRecord
from mailbox_app.webhooks.targets import URL_MAX as WEBHOOK_URL_MAX
from mailbox_app.webhooks.targets import WebhookTargetError, check_submitted
from runs_app.api.inputs import AGENT_ID_MAX, THREAD_ID_MAX, id_problem
from runs_app.api.run_options import RunOptionsIn

ROLES = ("user", "assistant", "system")
MODES = ("queue", "live_then_queue", "steer", "interrupt_then_queue", "resume_open_run")
MESSAGE_MODES = (*MODES, "auto")  # `auto`: the thread's inbox policy decides (docs/inbox.md)
MAX_MESSAGES = 100
MAX_CONTENT_CHARS = 100_000


class MessageIn(serializers.Serializer[dict[str, Any]]):
    role = serializers.ChoiceField(choices=ROLES)
    content = serializers.CharField(allow_blank=False, trim_whitespace=False, max_length=MAX_CONTENT_CHARS)


class MessagesField(serializers.ListField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=MessageIn(), max_length=MAX_MESSAGES, **kwargs)


def validate_messages(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not value:
        raise serializers.ValidationError("at least one message is required")
    return value


class AgentIdField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            required=False,
            allow_blank=False,
            max_length=AGENT_ID_MAX,
            error_messages={"blank": "agent_id cannot be empty"},
            **kwargs,
        )

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data).strip()
        if not value:
            raise serializers.ValidationError("agent_id cannot be empty")
        problem = id_problem(value, max_length=AGENT_ID_MAX)
        if problem is not None:
            raise serializers.ValidationError(problem)
        return value


class OptionalThreadIdField(serializers.CharField):
    """A body `thread_id`: blank means "a new thread"; otherwise the path parameters' rules."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, allow_blank=True, max_length=THREAD_ID_MAX, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data).strip()
        problem = id_problem(value, max_length=THREAD_ID_MAX) if value else None
        if problem is not None:
            raise serializers.ValidationError(problem)
        return value


class WebhookField(serializers.CharField):
    """A submit's `webhook`: an http(s) URL called when the run finishes or waits for a decision; a
    loopback / link-local / private-range target is refused unless AWAKEN_WEBHOOK_ALLOW_PRIVATE."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, allow_blank=False, max_length=WEBHOOK_URL_MAX, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        try:
            return check_submitted(value, allow_private=awaken_settings.WEBHOOK_ALLOW_PRIVATE)
        except WebhookTargetError as exc:
            raise serializers.ValidationError(str(exc)) from None


class RunSubmitIn(RunOptionsIn):
    agent_id = AgentIdField()
    thread_id = OptionalThreadIdField()
    messages = MessagesField(validators=[validate_messages])
    stream = serializers.BooleanField(required=False, default=False)
    webhook = WebhookField()
    idempotency_key = serializers.CharField(required=False, max_length=255)


class ThreadRunSubmitIn(RunOptionsIn):
    agent_id = AgentIdField()
    messages = MessagesField(validators=[validate_messages])
    stream = serializers.BooleanField(required=False, default=False)
    webhook = WebhookField()
    idempotency_key = serializers.CharField(required=False, max_length=255)


class MailboxSubmitIn(RunOptionsIn):
    agent_id = AgentIdField()
    messages = MessagesField(validators=[validate_messages])
    webhook = WebhookField()
    idempotency_key = serializers.CharField(required=False, max_length=255)


class ThreadMessagesIn(serializers.Serializer[dict[str, Any]]):
    agent_id = AgentIdField()
    messages = MessagesField(validators=[validate_messages])
    mode = serializers.ChoiceField(
        choices=MESSAGE_MODES,
        required=False,
        default="queue",
        help_text="auto: the thread's inbox policy decides (coalesce, steer, queue...; docs/inbox.md)",
    )
    idempotency_key = serializers.CharField(required=False, max_length=255)


class RunInputsIn(serializers.Serializer[dict[str, Any]]):
    messages = MessagesField(validators=[validate_messages])
    mode = serializers.ChoiceField(choices=MODES, required=False, default="queue")
    idempotency_key = serializers.CharField(required=False, max_length=255)


class DecisionIn(serializers.Serializer[dict[str, Any]]):
    tool_call_id = serializers.CharField(max_length=255)
    action = serializers.CharField(max_length=32)
    payload = serializers.JSONField(required=False, allow_null=True)

    def validate_action(self, value: str) -> str:
        if value not in ("resume", "cancel"):
            raise serializers.ValidationError(f"invalid action: {value}, expected 'resume' or 'cancel'")
        return value


def to_messages(raw: list[dict[str, Any]]) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": m["role"], "content": m["content"]}) for m in raw]


# the run's document and the time format are the contract's (webhooks send the same document)
iso_ms = wire.iso_ms
run_json = wire.run_json
DISPATCH_TIME_FIELDS = ("available_at", "lease_until", "completed_at", "created_at", "updated_at")


def dispatch_json(dispatch: DispatchRecord) -> dict[str, Any]:
    data = dispatch.public_dict()  # never the claim token
    for name in DISPATCH_TIME_FIELDS:
        data[name] = iso_ms(data[name])
    return data


def message_json(record: Any) -> dict[str, Any]:
    message = record.message
    return {
        "seq": record.seq,
        "message_id": record.message_id,
        "role": message.role.value,
        "content": message.text,
        "content_blocks": message.content,
        "visibility": message.visibility.value,
        "run_id": record.produced_by_run_id,
        "created_at": iso_ms(record.created_at),
        # tool calls and their results, and the partial output of a run that ended early (history.py)
        "tool_calls": [c.model_dump(mode="json") for c in message.tool_calls or []] or None,
        "tool_call_id": message.tool_call_id,
        "partial": bool((message.metadata or {}).get("partial")),
    }


def thread_json(thread: ThreadRecord, runs: Mapping[str, RunRecord | None]) -> dict[str, Any]:
    open_run = runs.get(thread.open_run_id or "")
    active_run = runs.get(thread.active_run_id or "")
    return {
        "id": thread.id,
        "title": thread.title,
        "metadata": thread.metadata,
        "inbox": thread.inbox,
        "open_run": None if open_run is None else run_json(open_run),
        "active_run": None if active_run is None else run_json(active_run),
        "latest_run_id": thread.latest_run_id,
        "message_count": thread.message_count,
        "created_at": iso_ms(thread.created_at),
        "updated_at": iso_ms(thread.updated_at),
    }


def parse_status_filter(raw: str | None) -> list[DispatchStatus] | None:
    if raw is None or raw.strip() == "":
        return None
    statuses = []
    for part in raw.split(","):
        try:
            statuses.append(DispatchStatus(part.strip()))
        except ValueError:
            raise serializers.ValidationError({"status": f"invalid status filter: {part.strip()}"}) from None
    return statuses
