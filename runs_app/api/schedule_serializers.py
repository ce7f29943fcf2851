"""Request validation and response shapes of a thread's schedules (docs/inbox.md,
mailbox_app/services/schedules.py): a cron in a time zone or an interval, the messages each firing
submits, its run metadata, its agent, and what a firing does on a busy thread."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from mailbox_app.contract.inbox import ScheduleIfBusy
from mailbox_app.services.schedules import MAX_INTERVAL_S, InvalidSchedule, Timing
from runs_app.api.pagination import page_out
from runs_app.api.run_options import MetadataField
from runs_app.api.serializers import AgentIdField, MessagesField, validate_messages

IF_BUSY = tuple(v.value for v in ScheduleIfBusy)
CRON_MAX = 255
TIMEZONE_MAX = 64


def _cron_field() -> serializers.CharField:
    return serializers.CharField(
        required=False,
        max_length=CRON_MAX,
        help_text="5 fields: minute hour day-of-month month day-of-week (celery's crontab): 0 9 * * 1-5",
    )


def _timezone_field(**kwargs: Any) -> serializers.CharField:
    return serializers.CharField(
        required=False, max_length=TIMEZONE_MAX, help_text="the cron's IANA time zone (default UTC)", **kwargs
    )


def _interval_field() -> serializers.IntegerField:
    return serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_INTERVAL_S, help_text="fire every this many seconds"
    )


def _timing(attrs: dict[str, Any], *, partial: bool) -> Timing | None:
    """The body's timing as a `Timing` (None: a PATCH that leaves it alone), checked: a 400 names the
    field that cannot be."""
    cron, zone, interval = attrs.get("cron"), attrs.get("timezone"), attrs.get("interval_s")
    if partial and cron is None and interval is None:
        if zone is not None:
            raise serializers.ValidationError({"timezone": "give it with cron"})
        return None
    if (cron is None) == (interval is None):
        raise serializers.ValidationError(
            {"cron": "give either cron (with an optional timezone) or interval_s"}
        )
    if interval is not None and zone is not None:
        raise serializers.ValidationError({"timezone": "only a cron has a time zone"})
    timing = Timing(cron=cron, timezone=zone or "UTC", interval_s=interval)
    try:
        timing.check()
    except InvalidSchedule as exc:
        raise serializers.ValidationError({exc.field: str(exc)}) from None
    return timing


class ScheduleCreateIn(serializers.Serializer[dict[str, Any]]):
    cron = _cron_field()
    timezone = _timezone_field()
    interval_s = _interval_field()
    messages = MessagesField(validators=[validate_messages], help_text="what each firing submits")
    metadata = MetadataField(required=False, default=dict, help_text="stored on each run (with schedule_id)")
    agent_id = AgentIdField()
    if_busy = serializers.ChoiceField(
        choices=IF_BUSY,
        required=False,
        default=ScheduleIfBusy.SKIP.value,
        help_text="a firing on a thread with a run active or work queued: skip it, or enqueue behind",
    )
    enabled = serializers.BooleanField(required=False, default=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return {**attrs, "timing": _timing(attrs, partial=False)}


class SchedulePatchIn(serializers.Serializer[dict[str, Any]]):
    cron = _cron_field()
    timezone = _timezone_field()
    interval_s = _interval_field()
    messages = MessagesField(required=False, validators=[validate_messages])
    metadata = MetadataField(required=False)
    agent_id = AgentIdField(allow_null=True)
    if_busy = serializers.ChoiceField(choices=IF_BUSY, required=False)
    enabled = serializers.BooleanField(required=False, help_text="false pauses the schedule; true resumes it")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return {**attrs, "timing": _timing(attrs, partial=True)}


class ScheduleCreatedOut(serializers.Serializer[dict[str, Any]]):
    schedule_id = serializers.CharField()
    next_run_at = serializers.DateTimeField(help_text="the slot the next firing takes")


class ScheduleMessageOut(serializers.Serializer[dict[str, Any]]):
    role = serializers.CharField()
    content = serializers.CharField()


class ScheduleOut(serializers.Serializer[dict[str, Any]]):
    schedule_id = serializers.CharField()
    thread_id = serializers.CharField()
    cron = serializers.CharField(allow_null=True)
    timezone = serializers.CharField(allow_null=True)
    interval_s = serializers.IntegerField(allow_null=True)
    messages = ScheduleMessageOut(many=True)
    metadata = serializers.DictField()
    agent_id = serializers.CharField(allow_null=True)
    if_busy = serializers.ChoiceField(choices=IF_BUSY)
    enabled = serializers.BooleanField()
    next_run_at = serializers.DateTimeField(allow_null=True, help_text="null while disabled")
    last_fired_at = serializers.DateTimeField(allow_null=True, help_text="the slot of the last firing")
    last_outcome = serializers.CharField(
        help_text="submitted, skipped_busy, duplicate or failed ('' before any)"
    )
    last_run_id = serializers.CharField(allow_null=True)
    firings = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


SchedulePageOut = page_out("SchedulePageOut", ScheduleOut(many=True), "A page of a thread's schedules.")


class ScheduleDeletedOut(serializers.Serializer[dict[str, Any]]):
    status = serializers.CharField(help_text='always "deleted"')
    schedule_id = serializers.CharField()
