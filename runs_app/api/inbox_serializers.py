"""Request validation and response shapes of the inbox (docs/inbox.md): a thread's inbox policy (in the
thread routes' bodies and answers), pause and resume. (What became of a message delivered through the
inbox is in the submit's answer: responses.py SubmitOut.)"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError as PydanticValidationError
from rest_framework import serializers

from mailbox_app.contract.inbox import MAX_WAIT_MS_CAP, InboxPolicy, PauseScope, WhileRunning

WHILE_RUNNING = tuple(w.value for w in WhileRunning)
REASON_MAX = 500


class InboxPolicyIn(serializers.Serializer[dict[str, Any]]):
    """A thread's inbox policy; validated into `InboxPolicy`, stored as its JSON."""

    debounce_ms = serializers.IntegerField(
        required=False,
        default=0,
        min_value=0,
        max_value=MAX_WAIT_MS_CAP,
        help_text="messages arriving within this long of each other (no run active) coalesce into one run",
    )
    max_wait_ms = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=MAX_WAIT_MS_CAP,
        help_text="the run starts at the latest this long after its first message (default 5 × debounce_ms)",
    )
    while_running = serializers.ChoiceField(
        choices=WHILE_RUNNING,
        required=False,
        default=WhileRunning.QUEUE.value,
        help_text="while a run is active: steer it, queue for the next run, or interrupt it (latest wins)",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            policy = InboxPolicy.model_validate(attrs)
        except PydanticValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise serializers.ValidationError({"max_wait_ms": message}) from None
        return policy.as_json()


class InboxPolicyField(InboxPolicyIn):
    """`inbox` of a thread's create or update: a policy, or null (none of its own: the defaults apply)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        kwargs.setdefault(
            "help_text",
            "the thread's inbox policy (docs/inbox.md); null: the agent's or the project's default",
        )
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError("must be a JSON object or null")
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(f"unknown field(s): {', '.join(unknown)}")
        return super().to_internal_value(data)


class InboxPolicyOut(serializers.Serializer[dict[str, Any]]):
    debounce_ms = serializers.IntegerField()
    max_wait_ms = serializers.IntegerField()
    while_running = serializers.ChoiceField(choices=WHILE_RUNNING)


class ReasonField(serializers.CharField):
    """A string, never a number turned into one."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("must be a string")
        return str(super().to_internal_value(data))


class PauseIn(serializers.Serializer[dict[str, Any]]):
    interrupt = serializers.BooleanField(
        required=False, default=False, help_text="also stop the thread's active run (what is queued stays)"
    )
    reason = ReasonField(
        required=False, default="", allow_blank=True, max_length=REASON_MAX, help_text="shown with the pause"
    )


class PauseOut(serializers.Serializer[dict[str, Any]]):
    scope = serializers.ChoiceField(choices=[s.value for s in PauseScope])
    key = serializers.CharField(help_text="the thread or agent id; empty for everything")
    paused_by = serializers.CharField()
    by_operator = serializers.BooleanField(help_text="an operator's pause: only an operator resumes it")
    reason = serializers.CharField()
    since = serializers.DateTimeField()


class ThreadPauseOut(serializers.Serializer[dict[str, Any]]):
    thread_id = serializers.CharField()
    paused = serializers.BooleanField(help_text="whether a pause holds the thread's claims")
    pauses = PauseOut(
        many=True, help_text="the pauses holding the thread: its own, its agents', everything's"
    )
    stopped_runs = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="runs asked to stop (`interrupt`)"
    )


class ThreadResumeOut(serializers.Serializer[dict[str, Any]]):
    thread_id = serializers.CharField()
    resumed = serializers.BooleanField(help_text="false: the thread had no pause of its own")
    paused = serializers.BooleanField(
        help_text="whether a pause still holds the thread (an agent's, everything's)"
    )
    rung_threads = serializers.IntegerField()
