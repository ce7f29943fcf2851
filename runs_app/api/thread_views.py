"""HTTP views of threads: list, create, read, update, delete, search (runs_app/store/threads.py does the
work).

A thread is the caller's or a 404: another user's thread cannot be read, updated, deleted or found."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.storage import RunRecord, ThreadRecord
from runs_app.api import serializers as s
from runs_app.api import thread_serializers as ts
from runs_app.api.edge import EdgeCheckedView, user_id, validated
from runs_app.api.errors import ApiError, not_found
from runs_app.api.pagination import PARAMETERS as PAGE_PARAMETERS
from runs_app.api.pagination import Window
from runs_app.services import selectors
from runs_app.store import threads

_ERRORS = {400: ts.ErrorOut, 404: ts.ErrorOut}


def thread_payloads(
    records: list[ThreadRecord], statuses: dict[str, threads.ThreadStatus] | None = None
) -> list[dict[str, Any]]:
    """The threads as the API returns them: their open and active runs and their status included
    (read for the whole list at once: one query for the runs, one for the statuses)."""
    if statuses is None:
        statuses = threads.thread_statuses([t.id for t in records])
    runs: dict[str, RunRecord | None] = dict(selectors.thread_runs(records))
    return [
        {**s.thread_json(t, runs), "status": statuses.get(t.id, threads.ThreadStatus.IDLE).value}
        for t in records
    ]


def _payload(thread: ThreadRecord) -> dict[str, Any]:
    return thread_payloads([thread])[0]


class ThreadsView(EdgeCheckedView):
    @extend_schema(
        parameters=PAGE_PARAMETERS,
        responses={200: ts.ThreadPageOut, 400: ts.ErrorOut},
        operation_id="threads_list",
    )
    def get(self, request: Request) -> Response:
        window = Window.of(request)
        found, total = selectors.user_threads_page(user_id(request), limit=window.limit, offset=window.offset)
        return Response(window.page(thread_payloads(found), total))

    @extend_schema(
        request=ts.ThreadCreateIn,
        responses={201: ts.ThreadOut, 200: ts.ThreadOut, 409: ts.ErrorOut, **_ERRORS},
    )
    def post(self, request: Request) -> Response:
        data = validated(ts.ThreadCreateIn, request)
        thread_id = data.get("thread_id") or uuid7()
        created = threads.create_thread(
            thread_id=thread_id,
            owner_id=user_id(request),
            metadata=data["metadata"],
            title=data.get("title"),
            now=now_ms(),
            inbox=data.get("inbox"),
        )
        if created.created and created.thread is not None:
            return Response(_payload(created.thread), status=201)
        if data["if_exists"] == "raise":
            raise ApiError(
                f"thread already exists: {thread_id}",
                code="thread_exists",
                status_code=409,
                field="thread_id",
            )
        if created.thread is None:  # do_nothing on another user's id: it is not theirs to see
            raise not_found("thread", thread_id)
        return Response(_payload(created.thread), status=200)


class ThreadDetailView(EdgeCheckedView):
    @extend_schema(responses={200: ts.ThreadOut, **_ERRORS})
    def get(self, request: Request, thread_id: str) -> Response:
        view = selectors.owned_thread_view(user_id(request), thread_id)  # one round trip
        if view is None:
            raise not_found("thread", thread_id)
        return Response({**s.thread_json(view.thread, view.runs), "status": view.status.value})

    @extend_schema(request=ts.ThreadPatchIn, responses={200: ts.ThreadOut, **_ERRORS})
    def patch(self, request: Request, thread_id: str) -> Response:
        data = validated(ts.ThreadPatchIn, request)
        changes: dict[str, Any] = {"title": data["title"]} if "title" in data else {}
        if "inbox" in data:
            changes["inbox"] = data["inbox"]
        try:
            thread = threads.update_thread(
                thread_id=thread_id,
                owner_id=user_id(request),
                metadata=data.get("metadata"),
                now=now_ms(),
                **changes,
            )
        except threads.MetadataError as exc:
            raise ApiError(f"metadata: {exc}", code="invalid", field="metadata") from None
        if thread is None:
            raise not_found("thread", thread_id)
        return Response(_payload(thread))

    @extend_schema(request=None, responses={200: ts.ThreadDeletedOut, 409: ts.ErrorOut, **_ERRORS})
    def delete(self, request: Request, thread_id: str) -> Response:
        done = threads.delete_thread(thread_id=thread_id, owner_id=user_id(request))
        if done.outcome is threads.DeleteOutcome.NOT_FOUND:
            raise not_found("thread", thread_id)
        if done.outcome is threads.DeleteOutcome.ACTIVE:
            raise ApiError(
                f"thread {thread_id} has an active run or queued work; cancel it first",
                code="active_run_conflict",
                status_code=409,
            )
        return Response({"status": "deleted", "thread_id": thread_id, "deleted": done.counts})


class ThreadSearchView(EdgeCheckedView):
    @extend_schema(request=ts.ThreadSearchIn, responses={200: ts.ThreadPageOut, 400: ts.ErrorOut})
    def post(self, request: Request) -> Response:
        data = validated(ts.ThreadSearchIn, request)
        status = data.get("status")
        found, total = threads.search_threads(
            owner_id=user_id(request),
            metadata=data.get("metadata"),
            status=None if status is None else threads.ThreadStatus(status),
            limit=data["limit"],
            offset=data["offset"],
        )
        statuses = {f.thread.id: f.status for f in found}  # read by the search itself
        window = Window(limit=data["limit"], offset=data["offset"])
        return Response(window.page(thread_payloads([f.thread for f in found], statuses), total))
