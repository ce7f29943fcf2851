"""HTTP views of runs, control, the mailbox and messages: validate, call one service
(runs_app.services.control for
run control, the mailbox service or a selector for reads), serialize, map errors (errors.py).
Threads: thread_views.py; waiting for a run: run_wait.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers as drf
from rest_framework.request import Request
from rest_framework.response import Response

from mailbox_app.contract.inbox import InboxPolicy
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import InvalidInput, NotFound, ThreadRecord
from mailbox_app.realtime import events
from mailbox_app.services import mailbox
from mailbox_app.services.inbox import InboxResult
from mailbox_app.services.mailbox import (
    InboxDecides,
    InterruptThroughPort,
    MultitaskStrategy,
    SubmitRefused,
    SubmitResult,
    SubmitStatus,
)
from runs_app import store
from runs_app.api import responses as out
from runs_app.api import serializers as s
from runs_app.api.edge import (
    EdgeCheckedView,
    idempotency_key,
    not_taken_or_404,
    run_or_404,
    run_status_param,
    thread_or_404,
    user_id,
    validated,
)
from runs_app.api.errors import ApiError, not_found
from runs_app.api.idempotency import Outcome, Recorder, key_of, replayed, request_hash, run_once
from runs_app.api.inputs import THREAD_ID_MAX, optional_id
from runs_app.api.pagination import PARAMETERS as PAGE_PARAMETERS
from runs_app.api.pagination import Window
from runs_app.api.protocols import decisions
from runs_app.api.protocols.framing import START
from runs_app.api.protocols.selection import NATIVE, PROTOCOLS, requested_protocol, submit_body
from runs_app.api.run_options import metadata_filter, request_options, strategy
from runs_app.api.run_serializers import RunOut, RunPageOut
from runs_app.api.sse import EventStreamRenderer, stream_response
from runs_app.api.webhook_views import require_signing_secret
from runs_app.services import control, selectors

SUBMIT_RESPONSES: dict[int | tuple[int, str], Any] = {
    (201, out.JSON): out.SubmitOut,
    (200, out.EVENT_STREAM): out.event_stream(
        "the run's events (`stream`, `Accept: text/event-stream` or `?protocol=ai-sdk|ag-ui`)"
    ),
    **out.errors(400, 404, 409),
}


def submit_json(result: SubmitResult) -> dict[str, Any]:
    body = {
        "dispatch_id": result.dispatch_id,
        "run_id": result.run_id,
        "thread_id": result.thread_id,
        "status": result.status.value,
    }
    if result.delivered is not None:  # live input (mode live_then_queue / steer): where it went
        body["delivered"] = result.delivered.value
    return body


def inbox_json(result: InboxResult) -> dict[str, Any]:
    """A submit answered by the thread's inbox: the submit's fields, what became of the messages
    (`inbox`) and when their dispatch starts (docs/inbox.md)."""
    return {
        "dispatch_id": result.dispatch_id,
        "run_id": result.run_id,
        "thread_id": result.thread_id,
        "status": result.status.value,
        "inbox": result.outcome.value,
        "starts_at": s.iso_ms(result.starts_at) if result.status is SubmitStatus.QUEUED else None,
    }


def _inputs_json(result: SubmitResult) -> dict[str, Any]:
    return {**submit_json(result), "status": "inputs_accepted", "run_status": result.status.value}


def _wants_stream(request: Request, data: dict[str, Any]) -> bool:
    return bool(data.get("stream")) or "text/event-stream" in request.headers.get("Accept", "")


def _submit_request(thread_id: str, data: dict[str, Any]) -> RunRequest:
    return RunRequest(
        thread_id=thread_id,
        messages=s.to_messages(data["messages"]),
        agent_id=data.get("agent_id"),
        **request_options(data),
    )


_UNREAD: Any = object()  # the thread was not read before the submit


def submit_once(
    request: Request,
    data: dict[str, Any],
    thread_id: str,
    default: MultitaskStrategy,
    *,
    status_code: int,
    thread: ThreadRecord | None = _UNREAD,
) -> Outcome:
    """`control.submit` under the body's `multitask_strategy` (else `default`), at most once per key:
    the key's answer is written in the submit's transaction. A submit the mailbox can make in one
    statement (`control.submit_fused`: a background one, or a foreground one on a thread with no claim)
    writes the key there too and checks the thread's owner there; a foreground submit that must cancel
    a running run first goes through the port (its interrupt commits first).

    A body that leaves the choice to the thread (no `multitask_strategy`, no `after_seconds`) on a
    thread with an inbox policy goes through its inbox instead (docs/inbox.md). Whether it has one is
    read with the thread the route read already (`thread`), or by the fused submit itself, which refuses
    such a thread before it writes anything: a thread without a policy pays no extra query."""
    key = idempotency_key(request, data)
    run_request = _submit_request(thread_id, data)
    chosen, webhook, owner = strategy(data, default), data.get("webhook"), user_id(request)
    if webhook:
        require_signing_secret(owner)  # before anything is written (a foreground interrupt commits first)
    fingerprint = request_hash(request.path, data)
    inbox_may_decide = bool(thread_id) and "multitask_strategy" not in data and not data.get("after_seconds")
    fused = mailbox.fusable()
    if inbox_may_decide and (thread is not _UNREAD or not fused or control.inbox_defaults_configured()):
        known = not_taken_or_404(request, thread_id) if thread is _UNREAD else thread
        policy = control.inbox_policy(known, run_request.agent_id)
        if policy is not None:
            return _inbox_once(request, run_request, policy, webhook, key, fingerprint, status_code)
        thread = known
    if fused:
        try:
            return _submit_fused(
                run_request,
                chosen,
                owner,
                webhook,
                key,
                fingerprint,
                thread_id,
                status_code,
                inbox_may_decide,
            )
        except InboxDecides:  # the thread has a policy of its own (nothing was written)
            known = not_taken_or_404(request, thread_id)
            policy = control.inbox_policy(known, run_request.agent_id)
            assert policy is not None  # the statement saw the policy under the thread's row lock
            return _inbox_once(request, run_request, policy, webhook, key, fingerprint, status_code)
        except InterruptThroughPort:  # a run to cancel first (nothing was written): the port's submit
            pass
    if thread is _UNREAD:
        not_taken_or_404(request, thread_id)

    def action(record: Recorder) -> Outcome:
        def in_transaction(result: SubmitResult) -> None:
            record(status_code, submit_json(result))

        result = control.submit(
            run_request, chosen, owner_id=owner, webhook=webhook, in_transaction=in_transaction
        )
        return status_code, submit_json(result)

    return run_once(user_id=owner, key=key, fingerprint=fingerprint, action=action)


def _inbox_once(  # noqa: PLR0917 - the submit's parts, named where they are passed
    request: Request,
    run_request: RunRequest,
    policy: InboxPolicy,
    webhook: str | None,
    key: str | None,
    fingerprint: str,
    status_code: int,
) -> Outcome:
    """The run route's messages delivered to the thread's inbox, at most once per key."""
    owner = user_id(request)

    def action(record: Recorder) -> Outcome:
        def in_transaction(result: InboxResult) -> None:
            record(status_code, inbox_json(result))

        result = control.deliver_to_inbox(
            run_request, policy, owner_id=owner, webhook=webhook, in_transaction=in_transaction
        )
        return status_code, inbox_json(result)

    return run_once(user_id=owner, key=key, fingerprint=fingerprint, action=action)


def _submit_fused(  # noqa: PLR0917 - the submit's parts, named where they are passed
    run_request: RunRequest,
    chosen: MultitaskStrategy,
    owner: int,
    webhook: str | None,
    key: str | None,
    fingerprint: str,
    thread_id: str,
    status_code: int,
    defer_to_inbox: bool = False,
) -> Outcome:
    try:
        answer = control.submit_fused(
            run_request,
            chosen,
            owner_id=owner,
            webhook=webhook,
            idempotency=None if key is None else key_of(owner, key, fingerprint, status_code),
            defer_to_inbox=defer_to_inbox,
        )
    except NotFound:  # the thread is another user's (checked under its row lock): as if it did not exist
        raise not_found("thread", thread_id) from None
    except SubmitRefused as refused:
        if refused.reason != "in_progress":
            raise
        raise ApiError(
            "a request with this idempotency key is still in progress; retry shortly",
            code="idempotency_in_progress",
            status_code=409,
            field="idempotency_key",
        ) from None
    return (status_code, submit_json(answer)) if isinstance(answer, SubmitResult) else replayed(answer)


Inject = Callable[[list[ChatMessage], control.InputMode, int, control.InTransaction], SubmitResult]


def _inject_once(
    request: Request,
    data: dict[str, Any],
    inject: Inject,
    *,
    render: Callable[[SubmitResult], dict[str, Any]] = submit_json,
) -> Response:
    """`inject(messages, mode, owner, in_transaction)` at most once per idempotency key; 202."""
    key, owner = idempotency_key(request, data), user_id(request)
    messages, mode = s.to_messages(data["messages"]), control.InputMode(data["mode"])

    def action(record: Recorder) -> Outcome:
        def in_transaction(result: SubmitResult) -> None:
            record(202, render(result))

        return 202, render(inject(messages, mode, owner, in_transaction))

    status_code, body = run_once(
        user_id=owner, key=key, fingerprint=request_hash(request.path, data), action=action
    )
    return Response(body, status=status_code)


def _answered(request: Request, thread_id: str | None) -> HttpResponse | StreamingHttpResponse | None:
    """A front end answering the waiting run's tool calls (decisions, not a new run): the stream of the
    run's continuation; None for an ordinary submit."""
    protocol = requested_protocol(request)
    asked = decisions.requested_decisions(protocol, request.data)
    if asked is None:
        return None
    named_thread, answers = asked
    try:
        done = control.answer_waiting_run(thread_id or named_thread, answers, owner_id=user_id(request))
    except control.DecisionTargetNotFound as exc:
        raise ApiError(
            str(exc), code=exc.code, status_code=404, field=decisions.answers_field(protocol)
        ) from None
    except control.AlreadyDecided as exc:
        raise already_decided(exc, decisions.answers_field(protocol)) from None
    except InvalidInput as exc:  # one tool call answered twice in the body
        raise ApiError(str(exc), code="invalid", field=decisions.answers_field(protocol)) from None
    headers = {"X-Run-Id": done.run_id, "X-Thread-Id": done.thread_id}
    after = done.after_event_id or START
    return stream_response(
        done.run_id, after=after, protocol=protocol, thread_id=done.thread_id, headers=headers
    )


# --- runs ---------------------------------------------------------------------------------------------


class ForegroundSubmit(EdgeCheckedView):
    renderer_classes = [*EdgeCheckedView.renderer_classes, EventStreamRenderer]
    default_strategy = MultitaskStrategy.INTERRUPT  # POST runs, threads/{id}/runs: latest wins

    def _submit(
        self, request: Request, serializer: type[drf.Serializer[Any]], thread_id: str | None
    ) -> HttpResponse | StreamingHttpResponse | Response:
        if (answered := _answered(request, thread_id)) is not None:
            return answered
        protocol = requested_protocol(request)  # a front-end protocol (?protocol=ai-sdk|ag-ui) streams
        data = validated(serializer, request, submit_body(protocol, request.data))
        thread_id = thread_id or data.get("thread_id") or None
        thread = not_taken_or_404(request, thread_id) if thread_id else None
        status_code, body = submit_once(
            request, data, thread_id or "", self.default_strategy, status_code=201, thread=thread
        )
        if protocol == NATIVE and not _wants_stream(request, data):
            return Response(body, status=status_code)
        ids = {
            "X-Run-Id": body["run_id"],
            "X-Thread-Id": body["thread_id"],
            "X-Dispatch-Id": body["dispatch_id"],
        }
        return stream_response(body["run_id"], protocol=protocol, thread_id=body["thread_id"], headers=ids)


class RunsView(ForegroundSubmit):
    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=[s.value for s in RunStatus]),
            OpenApiParameter("thread_id", str),
            OpenApiParameter(
                "metadata", str, description="a JSON object: only runs whose metadata contains it"
            ),
            *PAGE_PARAMETERS,
        ],
        responses={(200, out.JSON): RunPageOut, **out.errors(400)},
        operation_id="runs_list",
    )
    def get(self, request: Request) -> Response:
        window = Window.of(request)
        runs, total = selectors.user_runs_page(
            user_id(request),
            status=run_status_param(request),
            thread_id=optional_id(
                request.query_params.get("thread_id"), field="thread_id", max_length=THREAD_ID_MAX
            ),
            metadata=metadata_filter(request.query_params.get("metadata")),
            limit=window.limit,
            offset=window.offset,
        )
        return Response(window.page([s.run_json(r) for r in runs], total))

    @extend_schema(request=s.RunSubmitIn, responses=SUBMIT_RESPONSES)
    def post(self, request: Request) -> HttpResponse | StreamingHttpResponse | Response:
        return self._submit(request, s.RunSubmitIn, None)


class ThreadRunsView(ForegroundSubmit):
    @extend_schema(
        parameters=[OpenApiParameter("status", str), *PAGE_PARAMETERS],
        responses={(200, out.JSON): RunPageOut, **out.errors(400, 404)},
    )
    def get(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        window = Window.of(request)
        page = store.list_runs(
            status=run_status_param(request), thread_id=thread_id, limit=window.limit, offset=window.offset
        )
        return Response(window.page([s.run_json(r) for r in page.items], page.total))

    @extend_schema(request=s.ThreadRunSubmitIn, responses=SUBMIT_RESPONSES)
    def post(self, request: Request, thread_id: str) -> HttpResponse | StreamingHttpResponse | Response:
        return self._submit(request, s.ThreadRunSubmitIn, thread_id)


class RunDetailView(EdgeCheckedView):
    @extend_schema(responses={200: RunOut, **out.errors(404)})
    def get(self, request: Request, run_id: str) -> Response:
        return Response(s.run_json(run_or_404(request, run_id)))


class ThreadActiveRunView(EdgeCheckedView):
    @extend_schema(responses={200: out.ActiveRunOut, **out.errors(404)})
    def get(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        run = selectors.active_run(thread_id)
        return Response({"active_run": None if run is None else s.run_json(run)})


class ThreadLatestRunView(EdgeCheckedView):
    @extend_schema(responses={200: RunOut, **out.errors(404)})
    def get(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        run = store.latest_run(thread_id=thread_id)
        if run is None:
            raise ApiError(
                f"run not found: no runs for thread {thread_id}", code="run_not_found", status_code=404
            )
        return Response(s.run_json(run))


class RunEventsView(EdgeCheckedView):
    renderer_classes = [*EdgeCheckedView.renderer_classes, EventStreamRenderer]

    @extend_schema(
        parameters=[OpenApiParameter("protocol", str, enum=list(PROTOCOLS))],
        responses={
            (200, out.EVENT_STREAM): out.event_stream("the run's events after `Last-Event-ID`"),
            204: None,
            **out.errors(400, 404, 410),
        },
    )
    def get(self, request: Request, run_id: str) -> HttpResponse | StreamingHttpResponse:
        run = run_or_404(request, run_id)
        protocol = requested_protocol(request)
        if not events.has_stream(run_id):
            return HttpResponse(status=204)
        after = request.headers.get("Last-Event-ID") or request.query_params.get("after") or "0-0"
        if not _valid_stream_id(after):
            raise ApiError(
                "Last-Event-ID must be a stream id like 1700000000000-0",
                code="invalid",
                field="Last-Event-ID",
            )
        return stream_response(run_id, after=after, protocol=protocol, thread_id=run.thread_id)


def _valid_stream_id(value: str) -> bool:
    ms, _, seq = value.partition("-")
    return (
        ms.isascii() and seq.isascii() and ms.isdigit() and seq.isdigit() and len(ms) < 20 and len(seq) < 20
    )


# --- control ------------------------------------------------------------------------------------------


def _cancelled(request: Request, kind: control.TargetKind, identifier: str) -> Response:
    """The cancel acts on what the id names as the route's kind, and only if it is the caller's (checked
    again where it acts): another user's, or nothing to cancel, is the 404 of an unknown id."""
    control.cancel(kind, identifier, owner_id=user_id(request))
    return Response({"status": "cancel_requested", f"{kind.value}_id": identifier}, status=202)


class RunCancelView(EdgeCheckedView):
    @extend_schema(request=None, responses={202: out.RunCancelOut, **out.errors(404)})
    def post(self, request: Request, run_id: str) -> Response:
        run_or_404(request, run_id)
        return _cancelled(request, control.TargetKind.RUN, run_id)


class ThreadCancelView(EdgeCheckedView):
    @extend_schema(request=None, responses={202: out.ThreadCancelOut, **out.errors(404)})
    def post(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        return _cancelled(request, control.TargetKind.THREAD, thread_id)


def _dispatch_or_404(request: Request, dispatch_id: str) -> DispatchRecord:
    dispatch = selectors.owned_dispatch(user_id(request), dispatch_id)
    if dispatch is None:
        raise not_found("dispatch", dispatch_id)
    return dispatch


class DispatchCancelView(EdgeCheckedView):
    @extend_schema(request=None, responses={202: out.DispatchCancelOut, **out.errors(404)})
    def post(self, request: Request, dispatch_id: str) -> Response:
        _dispatch_or_404(request, dispatch_id)
        return _cancelled(request, control.TargetKind.DISPATCH, dispatch_id)


class ThreadInterruptView(EdgeCheckedView):
    @extend_schema(request=None, responses={202: out.InterruptOut, **out.errors(404)})
    def post(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        done = control.interrupt_thread(thread_id)
        body = {
            "status": "interrupt_requested",
            "thread_id": done.thread_id,
            "superseded_dispatches": done.superseded_count,
            "active_dispatch_id": done.active_dispatch_id,
        }
        return Response(body, status=202)


def already_decided(exc: control.AlreadyDecided, field: str) -> ApiError:
    """409: the tool call took its one decision already (this one was not applied)."""
    return ApiError(str(exc), code=exc.code, status_code=409, field=field)


def _decided(request: Request, kind: control.TargetKind, identifier: str) -> Response:
    data = validated(s.DecisionIn, request)
    decision = control.Decision(data["tool_call_id"], data["action"], data.get("payload"))
    try:
        control.decide(kind, identifier, decision, owner_id=user_id(request))
    except control.AlreadyDecided as exc:
        raise already_decided(exc, "tool_call_id") from None
    body = {
        "status": "decision_submitted",
        f"{kind.value}_id": identifier,
        "tool_call_id": decision.tool_call_id,
    }
    return Response(body, status=202)


class ThreadDecisionView(EdgeCheckedView):
    @extend_schema(request=s.DecisionIn, responses={202: out.ThreadDecisionOut, **out.errors(400, 404, 409)})
    def post(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        return _decided(request, control.TargetKind.THREAD, thread_id)


class RunDecisionView(EdgeCheckedView):
    @extend_schema(request=s.DecisionIn, responses={202: out.RunDecisionOut, **out.errors(400, 404, 409)})
    def post(self, request: Request, run_id: str) -> Response:
        run_or_404(request, run_id)
        return _decided(request, control.TargetKind.RUN, run_id)


# --- thread mailbox and messages ----------------------------------------------------------------------


class ThreadMailboxView(EdgeCheckedView):
    @extend_schema(
        parameters=[OpenApiParameter("status", str), *PAGE_PARAMETERS],
        responses={200: out.DispatchPageOut, **out.errors(400, 404)},
    )
    def get(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        window = Window.of(request)
        try:
            statuses = s.parse_status_filter(request.query_params.get("status"))
        except drf.ValidationError as exc:
            raise ApiError(str(exc.detail["status"]), code="invalid", field="status") from None  # type: ignore[index,call-overload]
        items = mailbox.list_dispatches(thread_id, statuses, window.limit, window.offset)
        total = mailbox.count_dispatches(thread_id, statuses)
        return Response(window.page([s.dispatch_json(d) for d in items], total))

    @extend_schema(request=s.MailboxSubmitIn, responses={201: out.SubmitOut, **out.errors(400, 404, 409)})
    def post(self, request: Request, thread_id: str) -> Response:
        data = validated(s.MailboxSubmitIn, request)
        # the mailbox queues unless told otherwise
        status_code, body = submit_once(request, data, thread_id, MultitaskStrategy.ENQUEUE, status_code=201)
        return Response(body, status=status_code)


class ThreadMessagesView(EdgeCheckedView):
    @extend_schema(
        parameters=[*PAGE_PARAMETERS, OpenApiParameter("visibility", str, enum=["all"])],
        responses={200: out.MessagePageOut, **out.errors(400, 404)},
    )
    def get(self, request: Request, thread_id: str) -> Response:
        thread_or_404(request, thread_id)
        window = Window.of(request)
        visibility = request.query_params.get("visibility")
        if visibility not in (None, "", "all", "public"):
            raise ApiError(f"invalid visibility: {visibility}", code="invalid", field="visibility")
        records, total = store.list_message_records(
            thread_id=thread_id,
            offset=window.offset,
            limit=window.limit,
            include_internal=visibility == "all",
        )
        return Response(window.page([s.message_json(r) for r in records], total))

    @extend_schema(request=s.ThreadMessagesIn, responses={202: out.SubmitOut, **out.errors(400, 404, 409)})
    def post(self, request: Request, thread_id: str) -> Response:
        thread = thread_or_404(request, thread_id)
        data = validated(s.ThreadMessagesIn, request)
        agent_id = data.get("agent_id")
        if data["mode"] == control.InputMode.AUTO.value:
            return _auto_once(request, data, thread)

        def inject(
            messages: list[ChatMessage], mode: control.InputMode, owner: int, hook: control.InTransaction
        ) -> SubmitResult:
            return control.inject_user_input(
                thread_id, messages, mode=mode, owner_id=owner, agent_id=agent_id, in_transaction=hook
            )

        return _inject_once(request, data, inject)


def _auto_once(request: Request, data: dict[str, Any], thread: ThreadRecord) -> Response:
    """The `auto` mode: the thread's inbox policy decides; 202 with what became of the messages."""
    key, owner = idempotency_key(request, data), user_id(request)
    messages = s.to_messages(data["messages"])

    def action(record: Recorder) -> Outcome:
        def in_transaction(result: InboxResult) -> None:
            record(202, inbox_json(result))

        result = control.deliver_messages(
            thread, messages, owner_id=owner, agent_id=data.get("agent_id"), in_transaction=in_transaction
        )
        return 202, inbox_json(result)

    status_code, body = run_once(
        user_id=owner, key=key, fingerprint=request_hash(request.path, data), action=action
    )
    return Response(body, status=status_code)


class RunInputsView(EdgeCheckedView):
    @extend_schema(request=s.RunInputsIn, responses={202: out.RunInputsOut, **out.errors(400, 404, 409)})
    def post(self, request: Request, run_id: str) -> Response:
        run = run_or_404(request, run_id)
        data = validated(s.RunInputsIn, request)

        def inject(
            messages: list[ChatMessage], mode: control.InputMode, owner: int, hook: control.InTransaction
        ) -> SubmitResult:
            return control.inject_run_input(run, messages, mode=mode, owner_id=owner, in_transaction=hook)

        return _inject_once(request, data, inject, render=_inputs_json)


# --- dispatches ---------------------------------------------------------------------------------------


class DispatchDetailView(EdgeCheckedView):
    @extend_schema(responses={200: out.DispatchOut, **out.errors(404)})
    def get(self, request: Request, dispatch_id: str) -> Response:
        return Response(s.dispatch_json(_dispatch_or_404(request, dispatch_id)))
