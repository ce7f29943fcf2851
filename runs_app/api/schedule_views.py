"""HTTP views of a thread's schedules (docs/inbox.md): `GET|POST threads/{id}/schedules`, `GET|PATCH|DELETE
schedules/{id}` (mailbox_app/services/schedules.py does the work). Owned like threads: another user's
thread or schedule is a 404."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from mailbox_app.services import schedules
from mailbox_app.services.schedules import InvalidSchedule, ScheduleRecord
from runs_app.api import schedule_serializers as ss
from runs_app.api.edge import EdgeCheckedView, thread_or_404, user_id, validated
from runs_app.api.errors import ApiError, not_found
from runs_app.api.pagination import PARAMETERS as PAGE_PARAMETERS
from runs_app.api.pagination import Window
from runs_app.api.responses import errors
from runs_app.api.serializers import iso_ms


def schedule_json(schedule: ScheduleRecord) -> dict[str, Any]:
    timing = schedule.timing
    return {
        "schedule_id": schedule.schedule_id,
        "thread_id": schedule.thread_id,
        "cron": timing.cron,
        "timezone": timing.timezone if timing.cron is not None else None,
        "interval_s": timing.interval_s,
        "messages": schedule.messages,
        "metadata": schedule.metadata,
        "agent_id": schedule.agent_id,
        "if_busy": schedule.if_busy,
        "enabled": schedule.enabled,
        "next_run_at": iso_ms(schedule.next_run_at) if schedule.enabled else None,
        "last_fired_at": iso_ms(schedule.last_fired_at),
        "last_outcome": schedule.last_outcome,
        "last_run_id": schedule.last_run_id,
        "firings": schedule.firings,
        "created_at": iso_ms(schedule.created_at),
        "updated_at": iso_ms(schedule.updated_at),
    }


def _invalid(exc: InvalidSchedule) -> ApiError:
    return ApiError(f"{exc.field}: {exc}", code="invalid", field=exc.field)


class ThreadSchedulesView(EdgeCheckedView):
    @extend_schema(
        parameters=PAGE_PARAMETERS,
        responses={200: ss.SchedulePageOut, **errors(400, 404)},
        operation_id="threads_schedules_list",
    )
    def get(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        window = Window.of(request)
        found, total = schedules.of_thread(thread_id, limit=window.limit, offset=window.offset)
        return Response(window.page([schedule_json(s) for s in found], total))

    @extend_schema(request=ss.ScheduleCreateIn, responses={201: ss.ScheduleCreatedOut, **errors(400, 404)})
    def post(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        data = validated(ss.ScheduleCreateIn, request)
        try:
            created = schedules.create(
                thread_id=thread_id,
                owner_id=user_id(request),
                timing=data["timing"],
                messages=[{"role": m["role"], "content": m["content"]} for m in data["messages"]],
                metadata=data["metadata"],
                agent_id=data.get("agent_id"),
                if_busy=data["if_busy"],
                enabled=data["enabled"],
            )
        except InvalidSchedule as exc:
            raise _invalid(exc) from None
        body = {"schedule_id": created.schedule_id, "next_run_at": iso_ms(created.next_run_at)}
        return Response(body, status=201)


class ScheduleDetailView(EdgeCheckedView):
    @extend_schema(responses={200: ss.ScheduleOut, **errors(404)})
    def get(self, request: Request, schedule_id: str) -> Response:
        found = schedules.get(schedule_id, owner_id=user_id(request))
        if found is None:
            raise not_found("schedule", schedule_id)
        return Response(schedule_json(found))

    @extend_schema(request=ss.SchedulePatchIn, responses={200: ss.ScheduleOut, **errors(400, 404)})
    def patch(self, request: Request, schedule_id: str) -> Response:
        if schedules.get(schedule_id, owner_id=user_id(request)) is None:  # a 404 before a 400
            raise not_found("schedule", schedule_id)
        data = validated(ss.SchedulePatchIn, request)
        changes: dict[str, Any] = {"agent_id": data["agent_id"]} if "agent_id" in data else {}
        messages = data.get("messages")
        try:
            updated = schedules.update(
                schedule_id,
                owner_id=user_id(request),
                timing=data["timing"],
                messages=None
                if messages is None
                else [{"role": m["role"], "content": m["content"]} for m in messages],
                metadata=data.get("metadata"),
                if_busy=data.get("if_busy"),
                enabled=data.get("enabled"),
                **changes,
            )
        except InvalidSchedule as exc:
            raise _invalid(exc) from None
        if updated is None:  # deleted meanwhile
            raise not_found("schedule", schedule_id)
        return Response(schedule_json(updated))

    @extend_schema(request=None, responses={200: ss.ScheduleDeletedOut, **errors(404)})
    def delete(self, request: Request, schedule_id: str) -> Response:
        if not schedules.delete(schedule_id, owner_id=user_id(request)):
            raise not_found("schedule", schedule_id)
        return Response({"status": "deleted", "schedule_id": schedule_id})
