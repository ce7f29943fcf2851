"""Request validation and response shapes of the branching routes: `threads/{id}/fork` and
`runs/{id}/replay` (runs_app/services/fork.py does the work)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from runs_app.api.inputs import RUN_ID_MAX, id_problem
from runs_app.api.responses import SUBMIT_STATUSES
from runs_app.api.serializers import OptionalThreadIdField
from runs_app.api.thread_serializers import ThreadOut

STEP_KEY_MAX = 255  # runs_step.key (mailbox_app/store/runs_tables/steps.py MAX_KEY_CHARS)


class OptionalRunIdField(serializers.CharField):
    """A body run id: blank or absent means "the default"; otherwise the path parameters' rules."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, allow_blank=True, allow_null=True, max_length=RUN_ID_MAX, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):  # DRF would turn 5 into "5"
            raise serializers.ValidationError("must be a string")
        value = super().to_internal_value(data).strip()
        problem = id_problem(value, max_length=RUN_ID_MAX) if value else None
        if problem is not None:
            raise serializers.ValidationError(problem)
        return value


class ForkIn(serializers.Serializer[dict[str, Any]]):
    at_run_id = OptionalRunIdField(
        help_text="the run to fork at: the fork holds the messages up to and including its output "
        "(default: the thread's latest run)"
    )
    thread_id = OptionalThreadIdField(help_text="the fork's id; omitted or blank: a new UUID")


class StepKeyField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_blank=False, trim_whitespace=False, max_length=STEP_KEY_MAX, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("must be a string")
        value = str(super().to_internal_value(data))
        if not value.strip():
            raise serializers.ValidationError("must not be blank")
        if "\x00" in value:
            raise serializers.ValidationError("must not contain NUL characters")
        return value


class ReplayIn(serializers.Serializer[dict[str, Any]]):
    from_step = StepKeyField(
        help_text="the key of a step in the run's journal: the steps recorded before it are replayed from "
        "the journal, it and every later step run anew"
    )
    thread_id = OptionalThreadIdField(
        help_text="the id of the thread the replay runs on, a fork of the run's thread at the run before "
        "it (omitted or blank: a new UUID)"
    )


# --- response shapes ----------------------------------------------------------------------------------


class ForkedFromOut(serializers.Serializer[dict[str, Any]]):
    thread_id = serializers.CharField()
    run_id = serializers.CharField(allow_null=True, help_text="null: the fork holds no run's output")


class ForkOut(serializers.Serializer[dict[str, Any]]):
    """201: the new thread (as GET threads/{id} returns it; its metadata holds `forked_from`)."""

    thread = ThreadOut()
    forked_from = ForkedFromOut()
    message_count = serializers.IntegerField(help_text="the messages copied into the fork")


class ReplayOfOut(serializers.Serializer[dict[str, Any]]):
    run_id = serializers.CharField()
    from_step = serializers.CharField()


class ReplayOut(serializers.Serializer[dict[str, Any]]):
    """201: the replayed run (its dispatch, on the fork), and what it replays."""

    dispatch_id = serializers.CharField()
    run_id = serializers.CharField()
    thread_id = serializers.CharField()
    status = serializers.ChoiceField(choices=SUBMIT_STATUSES)
    forked_from = ForkedFromOut()
    replay_of = ReplayOfOut()
    replayed_steps = serializers.IntegerField(
        help_text="the steps the new run's journal starts with (recorded by the source before from_step)"
    )
