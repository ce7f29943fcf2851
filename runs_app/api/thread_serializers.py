"""Request validation and (for the OpenAPI schema) response shapes of the thread routes: create, update,
delete, search, and the thread as every thread route returns it."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from runs_app.api.inbox_serializers import InboxPolicyField, InboxPolicyOut
from runs_app.api.pagination import page_out
from runs_app.api.run_serializers import RunOut
from runs_app.api.serializers import OptionalThreadIdField
from runs_app.store.threads import MAX_METADATA_BYTES, ThreadStatus, metadata_problem

TITLE_MAX = 255  # runs_thread.title
SEARCH_LIMIT_MAX = 200
SEARCH_OFFSET_MAX = 1_000_000_000
IF_EXISTS = ("raise", "do_nothing")
THREAD_STATUSES = tuple(s.value for s in ThreadStatus)


class MetadataField(serializers.JSONField):
    """A JSON object of at most MAX_METADATA_BYTES (compact JSON) nested at most a few levels."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", f"a JSON object, at most {MAX_METADATA_BYTES} bytes as JSON")
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        problem = metadata_problem(value)
        if problem is not None:
            raise serializers.ValidationError(problem)
        return value


class TitleField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            required=False, allow_null=True, allow_blank=True, trim_whitespace=False, max_length=TITLE_MAX
        )

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):  # DRF would turn 5 into "5"
            raise serializers.ValidationError("must be a string or null")
        return str(super().to_internal_value(data))


class ThreadCreateIn(serializers.Serializer[dict[str, Any]]):
    thread_id = OptionalThreadIdField(help_text="the new thread's id; omitted or blank: a new UUID")
    metadata = MetadataField(required=False, default=dict)
    title = TitleField()
    if_exists = serializers.ChoiceField(
        choices=IF_EXISTS,
        required=False,
        default="raise",
        help_text="when the id is taken: raise (409) or do_nothing (200 with the existing thread, if yours)",
    )
    inbox = InboxPolicyField()


class ThreadPatchIn(serializers.Serializer[dict[str, Any]]):
    metadata = MetadataField(
        required=False,
        help_text="merged into the thread's metadata by top-level key; a key set to null is removed",
    )
    title = TitleField()
    inbox = InboxPolicyField()


class ThreadSearchIn(serializers.Serializer[dict[str, Any]]):
    metadata = MetadataField(required=False, help_text="threads whose metadata contains this object")
    status = serializers.ChoiceField(choices=THREAD_STATUSES, required=False)
    limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=SEARCH_LIMIT_MAX)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=SEARCH_OFFSET_MAX)


# --- response shapes (for the schema: the views render records as plain dicts) -----------------------


class ThreadOut(serializers.Serializer[dict[str, Any]]):
    id = serializers.CharField()
    title = serializers.CharField(allow_null=True)
    metadata = serializers.DictField()
    inbox = InboxPolicyOut(
        allow_null=True, help_text="the thread's own inbox policy; null: the defaults apply"
    )
    status = serializers.ChoiceField(
        choices=THREAD_STATUSES,
        help_text=(
            "busy: a dispatch queued or claimed, or a run running; waiting: otherwise, a run waiting; "
            "error: otherwise, the latest run ended with error or timeout; idle: anything else"
        ),
    )
    open_run = RunOut(allow_null=True, help_text="the run (as GET runs/{id} returns it)")
    active_run = RunOut(allow_null=True, help_text="the run (as GET runs/{id} returns it)")
    latest_run_id = serializers.CharField(allow_null=True)
    message_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


ThreadPageOut = page_out("ThreadPageOut", ThreadOut(many=True), "A page of the caller's threads.")


class ThreadDeletedOut(serializers.Serializer[dict[str, Any]]):
    status = serializers.ChoiceField(choices=["deleted"])
    thread_id = serializers.CharField()
    deleted = serializers.DictField(
        child=serializers.IntegerField(), help_text="rows removed, by kind (runs, messages, dispatches, ...)"
    )


class ErrorOut(serializers.Serializer[dict[str, Any]]):
    error = serializers.CharField()
    code = serializers.CharField()
    field = serializers.CharField(required=False)
