"""HTTP views of branching a conversation: fork a thread at one of its runs (`POST threads/{id}/fork`),
replay a run from one of its recorded steps (`POST runs/{id}/replay`). runs_app/services/fork.py does
the work; another user's thread or run is a 404, as everywhere."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from runs_app.api import fork_serializers as fs
from runs_app.api import responses as out
from runs_app.api.edge import EdgeCheckedView, user_id, validated
from runs_app.api.errors import ApiError
from runs_app.api.thread_views import thread_payloads
from runs_app.services import fork


def _refused(exc: fork.ForkError) -> ApiError:
    return ApiError(str(exc), code=exc.code, status_code=exc.status, field=exc.field)


class ThreadForkView(EdgeCheckedView):
    @extend_schema(request=fs.ForkIn, responses={201: fs.ForkOut, **out.errors(400, 404, 409)})
    def post(self, request: Request, thread_id: str) -> Response:
        data = validated(fs.ForkIn, request)
        try:
            forked = fork.fork_thread(
                user_id(request),
                thread_id,
                at_run_id=data.get("at_run_id") or None,
                thread_id=data.get("thread_id") or None,
            )
        except fork.ForkError as exc:
            raise _refused(exc) from None
        body = {
            "thread": thread_payloads([forked.thread])[0],
            "forked_from": forked.forked_from,
            "message_count": forked.message_count,
        }
        return Response(body, status=201)


class RunReplayView(EdgeCheckedView):
    @extend_schema(request=fs.ReplayIn, responses={201: fs.ReplayOut, **out.errors(400, 404, 409)})
    def post(self, request: Request, run_id: str) -> Response:
        data = validated(fs.ReplayIn, request)
        try:
            replay = fork.replay_run(
                user_id(request), run_id, from_step=data["from_step"], thread_id=data.get("thread_id") or None
            )
        except fork.ForkError as exc:
            raise _refused(exc) from None
        body = {
            "dispatch_id": replay.dispatch_id,
            "run_id": replay.run_id,
            "thread_id": replay.thread_id,
            "status": replay.status.value,
            "forked_from": replay.forked_from,
            "replay_of": replay.replay_of,
            "replayed_steps": replay.replayed_steps,
        }
        return Response(body, status=201)
