"""HTTP views of a thread's pause (docs/inbox.md): `GET|POST threads/{id}/pause`, `POST
threads/{id}/resume`. The thread is the caller's or a 404; the caller pauses and resumes their own
thread only (an agent or everything is paused by an operator: `manage.py mailbox_pause`, the admin), and
cannot resume a pause an operator made. The inbox policy itself is set with the thread (thread_views.py)
and applied by the `auto` message mode and the run routes (views.py)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from mailbox_app.contract.inbox import PauseRecord, PauseScope
from mailbox_app.services import pauses
from runs_app import store
from runs_app.api import inbox_serializers as ins
from runs_app.api.edge import EdgeCheckedView, thread_or_404, validated
from runs_app.api.errors import ApiError
from runs_app.api.responses import errors
from runs_app.api.serializers import iso_ms


def pause_json(pause: PauseRecord) -> dict[str, Any]:
    return {
        "scope": pause.scope.value,
        "key": pause.key,
        "paused_by": pause.paused_by,
        "by_operator": pause.by_operator,
        "reason": pause.reason,
        "since": iso_ms(pause.since),
    }


def _holding(thread_id: str) -> list[PauseRecord]:
    """The pauses that hold the thread: its own, its agent's (its latest run's), everything's."""
    latest = store.latest_run(thread_id=thread_id)
    return pauses.pauses_holding(thread_id, [latest.agent_id] if latest is not None else [])


def _caller(request: Request) -> str:
    return f"user:{request.user.get_username()}"


class ThreadPauseView(EdgeCheckedView):
    @extend_schema(responses={200: ins.ThreadPauseOut, **errors(400, 404)}, operation_id="threads_pause_read")
    def get(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        held = _holding(thread_id)
        return Response(
            {"thread_id": thread_id, "paused": bool(held), "pauses": [pause_json(p) for p in held]}
        )

    @extend_schema(request=ins.PauseIn, responses={200: ins.ThreadPauseOut, **errors(400, 404)})
    def post(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        data = validated(ins.PauseIn, request)
        done = pauses.pause(
            PauseScope.THREAD,
            thread_id,
            paused_by=_caller(request),
            by_operator=False,
            reason=data["reason"],
            interrupt=data["interrupt"],
        )
        held = _holding(thread_id)
        body = {
            "thread_id": thread_id,
            "paused": True,
            "pauses": [pause_json(p) for p in held],
            "stopped_runs": done.stopped_runs,
        }
        return Response(body)


class ThreadResumeView(EdgeCheckedView):
    @extend_schema(request=None, responses={200: ins.ThreadResumeOut, **errors(404, 409)})
    def post(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        try:
            done = pauses.resume(PauseScope.THREAD, thread_id, by_operator=False)
        except pauses.PausedByOperator as exc:
            raise ApiError(str(exc), code="paused_by_operator", status_code=409) from None
        body = {
            "thread_id": thread_id,
            "resumed": done.pause is not None,
            "paused": bool(_holding(thread_id)),
            "rung_threads": done.rung_threads,
        }
        return Response(body)
