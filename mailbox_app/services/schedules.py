"""Schedules on a thread (docs/inbox.md): an agent acts on a cron or an interval, per conversation.

Built on django-celery-beat: each schedule (`mailbox_schedule`) owns a `PeriodicTask` (a
`CrontabSchedule` in its time zone, or an `IntervalSchedule`) that makes beat send
`mailbox.fire_schedule` with the schedule's id; there is no second scheduler. A firing submits a
background run on the thread through the mailbox's ordinary submit, as the schedule's owner, with
metadata `schedule_id` and `scheduled_at` and the dedupe key `schedule:<id>:<slot>`.

Each slot fires at most once: the schedule row holds `next_run_at`, the slot the next firing takes. A
firing is accepted when that slot is due (or within `FIRE_EARLY_TOLERANCE_MS`, for clocks that differ
between beat and the worker), and the transaction that submits the run also moves `next_run_at` to the
following slot — on the condition that it still is the slot it read. A beat restarted before it saved its
own `last_run_at` sends the task again: that firing finds the slot moved and submits nothing; two
firings at once serialize on the thread's row lock and the second's conditional update matches no row,
which rolls its submit back. `if_busy` `skip` (the default) skips a firing while the thread has a run
active or work queued (the slot is still spent); `enqueue` queues behind.

The slots are computed here: a cron's in its time zone (django-celery-beat's `CrontabSchedule`
semantics, which are celery's `crontab`: minute, hour, day of month, month and day of week must all
match), an interval's as anchor + k × interval (the anchor is when the schedule was created or its
timing last changed; the PeriodicTask's `last_run_at` starts at the anchor, so beat's phase is ours).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import ParseException, crontab
from django.db import transaction
from django.db.models import F
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.inbox import ScheduleIfBusy
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import AlreadyExists, NotFound, StoreError
from mailbox_app.models import Schedule
from mailbox_app.services import mailbox
from mailbox_app.store.ports import run_store

log = logging.getLogger(__name__)
FIRE_TASK = "mailbox.fire_schedule"
FIRE_EARLY_TOLERANCE_MS = 2_000
MAX_INTERVAL_S = 366 * 86_400
CRON_SEARCH_DAYS = 5 * 366  # a date that occurs at all occurs within five years (February 29)


class InvalidSchedule(ValueError):
    """A schedule that cannot be: `field` names what is wrong (`cron`, `timezone`, `interval_s`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class FireOutcome(StrEnum):
    SUBMITTED = "submitted"
    SKIPPED_BUSY = "skipped_busy"  # if_busy=skip and the thread had a run active or work queued
    DUPLICATE = "duplicate"  # a live dispatch already has this slot's dedupe key
    FAILED = "failed"  # the submit was refused (the thread is not the owner's any more)
    NOT_DUE = "not_due"  # the slot is in the future: a repeated or early firing, nothing done
    DISABLED = "disabled"
    MISSING = "missing"  # no such schedule (deleted, with its thread or by itself)
    RACED = "raced"  # another firing took this slot first; this one rolled back


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule fires: a 5-field cron (minute hour day-of-month month day-of-week) in a time zone,
    or every `interval_s` seconds."""

    cron: str | None = None
    timezone: str = "UTC"
    interval_s: int | None = None

    def check(self) -> None:
        """InvalidSchedule naming the field when this timing cannot fire."""
        if (self.cron is None) == (self.interval_s is None):
            raise InvalidSchedule("cron", "give either cron (with an optional timezone) or interval_s")
        if self.interval_s is not None and not 1 <= self.interval_s <= MAX_INTERVAL_S:
            raise InvalidSchedule("interval_s", f"must be between 1 and {MAX_INTERVAL_S} seconds")
        zone(self.timezone)
        if self.cron is not None:
            next_cron_ms(self.cron, self.timezone, now_ms())  # parses, and fires at all


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    schedule_id: str
    thread_id: str
    owner_id: int
    timing: Timing
    messages: list[dict[str, str]]
    metadata: dict[str, Any]
    agent_id: str | None
    if_busy: str
    enabled: bool
    next_run_at: int
    last_fired_at: int | None
    last_outcome: str
    last_dispatch_id: str | None
    last_run_id: str | None
    firings: int
    created_at: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class Fired:
    outcome: FireOutcome
    slot: int | None = None
    dispatch_id: str | None = None
    run_id: str | None = None


# --- the timing ------------------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(
            "timezone", f"unknown time zone {name!r} (an IANA name, e.g. Europe/Paris)"
        ) from None


def parse_cron(cron: str) -> crontab:
    fields = cron.split()
    if len(fields) != 5:
        raise InvalidSchedule("cron", "must have 5 fields: minute hour day-of-month month day-of-week")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except (ValueError, ParseException) as exc:
        raise InvalidSchedule("cron", f"invalid cron {cron!r}: {exc}") from None


def next_cron_ms(cron: str, timezone: str, after_ms: int) -> int:
    """The first minute strictly after `after_ms` whose wall-clock time in `timezone` matches `cron`."""
    parsed, tz = parse_cron(cron), zone(timezone)
    spec: Any = parsed  # its expanded fields (sets of ints) are set in __init__, unknown to the stubs
    local = datetime.fromtimestamp(after_ms / 1000, tz).replace(tzinfo=None, second=0, microsecond=0)
    local += timedelta(minutes=1)
    limit = local + timedelta(days=CRON_SEARCH_DAYS)
    while local < limit:
        if local.month not in spec.month_of_year:
            local = (local.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
        elif local.day not in spec.day_of_month or local.isoweekday() % 7 not in spec.day_of_week:
            local = (local + timedelta(days=1)).replace(hour=0, minute=0)
        elif local.hour not in spec.hour:
            local = (local + timedelta(hours=1)).replace(minute=0)
        elif local.minute not in spec.minute:
            local += timedelta(minutes=1)
        else:
            return int(local.replace(tzinfo=tz).timestamp() * 1000)
    raise InvalidSchedule("cron", f"cron {cron!r} matches no date")


def next_interval_ms(anchor_ms: int, interval_s: int, after_ms: int) -> int:
    """The first anchor + k × interval (k >= 1) strictly after `after_ms`."""
    every = interval_s * 1000
    k = max((after_ms - anchor_ms) // every + 1, 1)
    return anchor_ms + k * every


def _next_after(schedule: Schedule, after_ms: int) -> int:
    if schedule.interval_s is not None:
        return next_interval_ms(schedule.anchor_at, schedule.interval_s, after_ms)
    assert schedule.cron is not None
    return next_cron_ms(schedule.cron, schedule.timezone, after_ms)


def _tolerance_ms(schedule: Schedule) -> int:
    if schedule.interval_s is not None:
        return min(FIRE_EARLY_TOLERANCE_MS, schedule.interval_s * 1000 // 4)
    return FIRE_EARLY_TOLERANCE_MS


# --- the beat row ----------------------------------------------------------------------------------


def _as_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _beat_timing(timing: Timing) -> dict[str, Any]:
    """The PeriodicTask's crontab or interval (shared rows, found or created)."""
    if timing.interval_s is not None:
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=timing.interval_s, period=IntervalSchedule.SECONDS
        )
        return {"interval": interval, "crontab": None}
    assert timing.cron is not None
    minute, hour, day_of_month, month_of_year, day_of_week = timing.cron.split()
    cron, _ = CrontabSchedule.objects.get_or_create(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
        timezone=zone(timing.timezone),
    )
    return {"interval": None, "crontab": cron}


def _sync_beat(task: PeriodicTask, schedule: Schedule, timing: Timing | None) -> None:
    """The beat row follows the schedule: its timing (when changed), `enabled`, and for an interval the
    anchor as `last_run_at` (beat fires at last_run_at + interval)."""
    if timing is not None:
        for name, value in _beat_timing(timing).items():
            setattr(task, name, value)
    task.enabled = schedule.enabled
    task.last_run_at = _as_datetime(schedule.anchor_at) if schedule.interval_s is not None else None
    task.save()


# --- create, read, change, delete ------------------------------------------------------------------


def create(
    *,
    thread_id: str,
    owner_id: int,
    timing: Timing,
    messages: list[dict[str, str]],
    metadata: dict[str, Any] | None = None,
    agent_id: str | None = None,
    if_busy: str = ScheduleIfBusy.SKIP.value,
    enabled: bool = True,
) -> ScheduleRecord:
    """A schedule on the owner's thread (NotFound when the thread is not theirs) and its beat row, in
    one transaction. InvalidSchedule (nothing written) names a field that cannot be."""
    timing.check()
    _owned_thread(thread_id, owner_id)
    now = now_ms()
    schedule_id = uuid7()
    with transaction.atomic():
        task = PeriodicTask(
            name=f"awaken schedule {schedule_id}",
            task=FIRE_TASK,
            kwargs=json.dumps({"schedule_id": schedule_id}),
            description=f"thread {thread_id}",
            **_beat_timing(timing),
        )
        schedule = Schedule(
            schedule_id=schedule_id,
            thread_id=thread_id,
            owner_id=owner_id,
            cron=timing.cron,
            timezone=timing.timezone,
            interval_s=timing.interval_s,
            messages=messages,
            metadata=metadata or {},
            agent_id=agent_id,
            if_busy=if_busy,
            enabled=enabled,
            anchor_at=now,
            next_run_at=0,
            created_at=now,
            updated_at=now,
        )
        schedule.next_run_at = _next_after(schedule, now)
        task.enabled = enabled
        task.last_run_at = _as_datetime(now) if timing.interval_s is not None else None
        task.save()
        schedule.periodic_task = task
        schedule.save(force_insert=True)
    return _record(schedule)


def _owned_thread(thread_id: str, owner_id: int) -> None:
    thread = run_store().load_thread(thread_id=thread_id)
    if thread is None or thread.owner_id != owner_id:
        raise NotFound(f"thread {thread_id} not found")


def get(schedule_id: str, *, owner_id: int | None = None) -> ScheduleRecord | None:
    """The schedule (only if it is `owner_id`'s, when given)."""
    found = Schedule.objects.filter(pk=schedule_id)
    if owner_id is not None:
        found = found.filter(owner_id=owner_id)
    schedule = found.first()
    return None if schedule is None else _record(schedule)


def of_thread(thread_id: str, *, limit: int, offset: int) -> tuple[list[ScheduleRecord], int]:
    found = Schedule.objects.filter(thread_id=thread_id).order_by("created_at", "schedule_id")
    return [_record(s) for s in found[offset : offset + limit]], found.count()


_UNCHANGED: Any = object()


def update(
    schedule_id: str,
    *,
    owner_id: int,
    timing: Timing | None = None,
    messages: list[dict[str, str]] | None = None,
    metadata: dict[str, Any] | None = None,
    agent_id: Any = _UNCHANGED,
    if_busy: str | None = None,
    enabled: bool | None = None,
) -> ScheduleRecord | None:
    """Change the owner's schedule (None: not theirs, or gone). A new timing, or enabling a disabled
    schedule, starts its slots afresh from now; disabling stops its beat row too."""
    if timing is not None:
        timing.check()
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().filter(pk=schedule_id, owner_id=owner_id).first()
        if schedule is None:
            return None
        now = now_ms()
        restart = timing is not None or (enabled is True and not schedule.enabled)
        if timing is not None:
            schedule.cron, schedule.timezone, schedule.interval_s = (
                timing.cron,
                timing.timezone,
                timing.interval_s,
            )
        if messages is not None:
            schedule.messages = messages
        if metadata is not None:
            schedule.metadata = metadata
        if agent_id is not _UNCHANGED:
            schedule.agent_id = agent_id
        if if_busy is not None:
            schedule.if_busy = if_busy
        if enabled is not None:
            schedule.enabled = enabled
        if restart:
            schedule.anchor_at = now
            schedule.next_run_at = _next_after(schedule, now)
        schedule.updated_at = now
        schedule.save()
        _sync_beat(schedule.periodic_task, schedule, timing)
    return _record(schedule)


def delete(schedule_id: str, *, owner_id: int | None = None) -> bool:
    """Delete the schedule and its beat row (only the owner's, when `owner_id` is given)."""
    with transaction.atomic():
        found = Schedule.objects.select_for_update().filter(pk=schedule_id)
        if owner_id is not None:
            found = found.filter(owner_id=owner_id)
        schedule = found.first()
        if schedule is None:
            return False
        task_id = schedule.periodic_task_id
        schedule.delete()
        PeriodicTask.objects.filter(pk=task_id).delete()  # its signal tells beat
    return True


# --- firing ----------------------------------------------------------------------------------------


def fire(schedule_id: str, *, now: int | None = None) -> Fired:
    """Beat's firing of a schedule: submit the due slot's run, at most once per slot (see the module's
    docstring). Never raises for a refused submit: the outcome says what happened."""
    stamp = now_ms() if now is None else now
    schedule = Schedule.objects.filter(pk=schedule_id).first()
    if schedule is None:
        return Fired(FireOutcome.MISSING)
    if not schedule.enabled:
        return Fired(FireOutcome.DISABLED)
    slot = schedule.next_run_at
    if slot > stamp + _tolerance_ms(schedule):
        return Fired(FireOutcome.NOT_DUE, slot)
    following = _next_after(schedule, max(stamp, slot))
    with transaction.atomic():
        outcome, submitted = _submit_slot(schedule, slot)
        taken = Schedule.objects.filter(pk=schedule_id, next_run_at=slot, enabled=True).update(
            next_run_at=following,
            last_fired_at=slot,
            last_outcome=outcome.value,
            last_dispatch_id=None if submitted is None else submitted.dispatch_id,
            last_run_id=None if submitted is None else submitted.run_id,
            firings=F("firings") + 1,
            updated_at=stamp,
        )
        if taken != 1:  # deleted, changed or fired by another firing meanwhile: nothing of this one stays
            transaction.set_rollback(True)
            return Fired(FireOutcome.RACED, slot)
    if submitted is None:
        return Fired(outcome, slot)
    return Fired(outcome, slot, submitted.dispatch_id, submitted.run_id)


def _submit_slot(schedule: Schedule, slot: int) -> tuple[FireOutcome, mailbox.SubmitResult | None]:
    """The slot's background run, in a savepoint of the firing's transaction (a refusal rolls back only
    the submit). Takes the thread's row lock before the firing updates the schedule row, in the order
    a thread's delete takes them."""
    request = RunRequest(
        thread_id=schedule.thread_id,
        messages=[ChatMessage.model_validate(m) for m in schedule.messages],
        agent_id=schedule.agent_id or None,
        metadata={
            **(schedule.metadata or {}),
            "schedule_id": schedule.schedule_id,
            "scheduled_at": _as_datetime(slot).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        },
        dedupe_key=f"schedule:{schedule.schedule_id}:{slot}",
    )
    try:
        with transaction.atomic():
            return FireOutcome.SUBMITTED, mailbox.submit_background(
                request,
                owner_id=schedule.owner_id,
                reject_if_busy=schedule.if_busy == ScheduleIfBusy.SKIP.value,
            )
    except mailbox.ThreadBusy:
        return FireOutcome.SKIPPED_BUSY, None
    except AlreadyExists:
        return FireOutcome.DUPLICATE, None
    except StoreError:
        log.warning(
            "schedule %s: the submit of slot %d was refused", schedule.schedule_id, slot, exc_info=True
        )
        return FireOutcome.FAILED, None


def _record(schedule: Schedule) -> ScheduleRecord:
    return ScheduleRecord(
        schedule_id=schedule.schedule_id,
        thread_id=schedule.thread_id,
        owner_id=schedule.owner_id,
        timing=Timing(cron=schedule.cron, timezone=schedule.timezone, interval_s=schedule.interval_s),
        messages=list(schedule.messages),
        metadata=dict(schedule.metadata or {}),
        agent_id=schedule.agent_id,
        if_busy=schedule.if_busy,
        enabled=schedule.enabled,
        next_run_at=schedule.next_run_at,
        last_fired_at=schedule.last_fired_at,
        last_outcome=schedule.last_outcome,
        last_dispatch_id=schedule.last_dispatch_id,
        last_run_id=schedule.last_run_id,
        firings=schedule.firings,
        created_at=schedule.created_at,
        updated_at=schedule.updated_at,
    )
