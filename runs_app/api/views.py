"""HTTP views: validate, call one service, serialize, map errors (see errors.py). Thin by design."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers as drf
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mailbox_app import events, service, webhooks
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.service import MultitaskStrategy
from runs_app import selectors, store
from runs_app.api import serializers as s
from runs_app.api.errors import ApiError, not_found
from runs_app.api.idempotency import Outcome, Recorder, in_one_transaction, request_hash, run_once
from runs_app.api.inputs import (
    IDEMPOTENCY_KEY_MAX,
    PATH_ID_MAX,
    THREAD_ID_MAX,
    InputError,
    check_query,
    normalize_id,
    optional_id,
)
from runs_app.api.protocols.decisions import answer_decisions
from runs_app.api.protocols.selection import NATIVE, PROTOCOLS, requested_protocol, submit_body
from runs_app.api.run_options import metadata_filter, request_options, strategy
from runs_app.api.run_serializers import RunPageOut
from runs_app.api.sse import EventStreamRenderer, stream_response


class EdgeCheckedView(APIView):
    """Base of every API view: path identifiers are normalized (`normalize_id`) before the handler sees
    them and query parameters are checked; errors surface after authentication (401 comes first)."""

    _input_error: InputError | None = None

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self._input_error = None
        try:
            kwargs = {
                name: normalize_id(value, field=name, max_length=PATH_ID_MAX[name])
                if name in PATH_ID_MAX and isinstance(value, str)
                else value
                for name, value in kwargs.items()
            }
        except InputError as exc:
            self._input_error = exc
        return super().dispatch(request, *args, **kwargs)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if self._input_error is not None:
            raise self._input_error
        check_query(request.query_params)


MAX_PAGE = 200
MAX_OFFSET = 1_000_000_000  # beyond PostgreSQL's bigint OFFSET nothing exists anyway


def _int_param(request: Request, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(f"{name} must be an integer", code="invalid", field=name) from None
    if value < minimum:
        raise ApiError(f"{name} must be >= {minimum}", code="invalid", field=name)
    return min(value, maximum) if maximum is not None else value


def _page(request: Request) -> tuple[int, int]:
    return (
        _int_param(request, "limit", 50, minimum=1, maximum=MAX_PAGE),
        _int_param(request, "offset", 0, minimum=0, maximum=MAX_OFFSET),
    )


def _run_status(request: Request) -> RunStatus | None:
    raw = request.query_params.get("status")
    if not raw:
        return None
    try:
        return RunStatus(raw)
    except ValueError:
        raise ApiError(f"invalid status filter: {raw}", code="invalid", field="status") from None


def _validated(
    serializer_class: type[drf.Serializer[Any]], request: Request, body: Any = None
) -> dict[str, Any]:
    """`body` (default: the request's) validated by `serializer_class`."""
    body = request.data if body is None else body
    if not isinstance(body, dict):
        raise ApiError("request body must be a JSON object", code="invalid")
    serializer = serializer_class(data=body)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _user_id(request: Request) -> int:
    pk = request.user.pk
    assert pk is not None  # IsAuthenticated ran first
    return int(pk)


def _thread_or_404(request: Request, thread_id: str) -> Any:
    thread = selectors.owned_thread(_user_id(request), thread_id)
    if thread is None:
        raise not_found("thread", thread_id)
    return thread


def _run_or_404(request: Request, run_id: str) -> Any:
    run = selectors.owned_run(_user_id(request), run_id)
    if run is None:
        raise not_found("run", run_id)
    return run


def _submit_result(result: service.SubmitResult) -> dict[str, Any]:
    return {
        "dispatch_id": result.dispatch_id,
        "run_id": result.run_id,
        "thread_id": result.thread_id,
        "status": result.status.value,
    }


def _subscribe(result: service.SubmitResult, webhook: str | None) -> None:
    """The submit's `webhook` for its run, inside the submit's transaction."""
    if webhook:
        webhooks.subscribe(result.run_id, webhook)


def _wants_stream(request: Request, data: dict[str, Any]) -> bool:
    return bool(data.get("stream")) or "text/event-stream" in request.headers.get("Accept", "")


def _idempotency_key(request: Request, data: dict[str, Any]) -> str | None:
    in_body = data.pop("idempotency_key", None)
    if in_body:
        return normalize_id(in_body, field="idempotency_key", max_length=IDEMPOTENCY_KEY_MAX)
    header = request.headers.get("Idempotency-Key")
    if not header:
        return None
    return normalize_id(header, field="Idempotency-Key", max_length=IDEMPOTENCY_KEY_MAX)


# --- runs ---------------------------------------------------------------------------------------------


def _front_end_body(request: Request) -> Any:
    """A front-end protocol's own submit body (`useChat`'s, AG-UI's `RunAgentInput`) in this API's terms."""
    return submit_body(requested_protocol(request), request.data)


class _ForegroundSubmit(EdgeCheckedView):
    renderer_classes = [*EdgeCheckedView.renderer_classes, EventStreamRenderer]
    default_strategy = MultitaskStrategy.INTERRUPT  # POST runs, threads/{id}/runs: latest wins

    def _submit(
        self, request: Request, data: dict[str, Any], thread_id: str | None
    ) -> HttpResponse | StreamingHttpResponse | Response:
        protocol = requested_protocol(request)  # a front-end protocol (?protocol=ai-sdk|ag-ui) streams
        stream = protocol != NATIVE or _wants_stream(request, data)
        status_code, body = self._submit_once(request, data, thread_id)
        if stream:
            return stream_response(
                body["run_id"],
                protocol=protocol,
                thread_id=body["thread_id"],
                headers={
                    "X-Run-Id": body["run_id"],
                    "X-Thread-Id": body["thread_id"],
                    "X-Dispatch-Id": body["dispatch_id"],
                },
            )
        return Response(body, status=status_code)

    def _submit_once(self, request: Request, data: dict[str, Any], thread_id: str | None) -> Outcome:
        """The submit under the body's `multitask_strategy` (else the route's), at most once per key."""
        user_id = _user_id(request)
        if thread_id and selectors.thread_taken_by_other(user_id, thread_id.strip()):
            raise not_found("thread", thread_id)
        key = _idempotency_key(request, data)
        run_request = RunRequest(
            thread_id=thread_id or "",
            messages=s.to_messages(data["messages"]),
            agent_id=data.get("agent_id"),
            **request_options(data),
        )
        chosen = strategy(data, self.default_strategy)
        webhook = data.get("webhook")

        def action(record: Recorder) -> Outcome:
            # The key's answer (and the webhook) is written in the claim transaction; the interrupt
            # before it commits alone.
            def in_transaction(r: service.SubmitResult) -> None:
                _subscribe(r, webhook)
                record(201, _submit_result(r))

            result = service.submit_as(run_request, chosen, owner_id=user_id, in_transaction=in_transaction)
            return 201, _submit_result(result)

        return run_once(user_id=user_id, key=key, fingerprint=request_hash(request.path, data), action=action)


class RunsView(_ForegroundSubmit):
    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=[s.value for s in RunStatus]),
            OpenApiParameter("thread_id", str),
            OpenApiParameter(
                "metadata", str, description="a JSON object: only runs whose metadata contains it"
            ),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={200: RunPageOut},
    )
    def get(self, request: Request) -> Response:
        limit, offset = _page(request)
        qs = selectors.user_runs(
            _user_id(request),
            status=_run_status(request),
            thread_id=optional_id(
                request.query_params.get("thread_id"), field="thread_id", max_length=THREAD_ID_MAX
            ),
            metadata=metadata_filter(request.query_params.get("metadata")),
        )
        total = qs.count()
        items = [store.load_run(run_id=r.run_id) for r in qs[offset : offset + limit]]
        return Response(
            {
                "items": [s.run_json(r) for r in items if r],
                "total": total,
                "has_more": offset + len(items) < total,
            }
        )

    @extend_schema(request=s.RunSubmitIn, responses={201: dict, 200: dict})
    def post(self, request: Request) -> HttpResponse | StreamingHttpResponse | Response:
        if (resumed := answer_decisions(request, None, owner_id=_user_id(request))) is not None:
            return resumed  # a front end answering the waiting run's tool calls: decisions, not a new run
        data = _validated(s.RunSubmitIn, request, _front_end_body(request))
        return self._submit(request, data, data.get("thread_id") or None)


class ThreadRunsView(_ForegroundSubmit):
    @extend_schema(
        parameters=[
            OpenApiParameter("status", str),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={200: dict},
    )
    def get(self, request: Request, thread_id: str) -> Response:
        _thread_or_404(request, thread_id)
        limit, offset = _page(request)
        page = store.list_runs(status=_run_status(request), thread_id=thread_id, limit=limit, offset=offset)
        return Response(
            {"items": [s.run_json(r) for r in page.items], "total": page.total, "has_more": page.has_more}
        )

    @extend_schema(request=s.ThreadRunSubmitIn, responses={201: dict, 200: dict})
    def post(self, request: Request, thread_id: str) -> HttpResponse | StreamingHttpResponse | Response:
        if (resumed := answer_decisions(request, thread_id, owner_id=_user_id(request))) is not None:
            return resumed  # a front end answering the waiting run's tool calls: decisions, not a new run
        data = _validated(s.ThreadRunSubmitIn, request, _front_end_body(request))
        return self._submit(request, data, thread_id)


class RunDetailView(EdgeCheckedView):
    @extend_schema(responses={200: dict})
    def get(self, request: Request, run_id: str) -> Response:
        return Response(s.run_json(_run_or_404(request, run_id)))


class ThreadActiveRunView(EdgeCheckedView):
    @extend_schema(responses={200: dict})
    def get(self, request: Request, thread_id: str) -> Response:
        _thread_or_404(request, thread_id)
        run = selectors.active_run(thread_id)
        return Response({"active_run": None if run is None else s.run_json(run)})


class ThreadLatestRunView(EdgeCheckedView):
    @extend_schema(responses={200: dict})
    def get(self, request: Request, thread_id: str) -> Response:
        _thread_or_404(request, thread_id)
        run = store.latest_run(thread_id=thread_id)
        if run is None:
            raise ApiError(
                f"run not found: no runs for thread {thread_id}", code="run_not_found", status_code=404
            )
        return Response(s.run_json(run))


class RunEventsView(EdgeCheckedView):
    renderer_classes = [*EdgeCheckedView.renderer_classes, EventStreamRenderer]

    @extend_schema(
        parameters=[OpenApiParameter("protocol", str, enum=list(PROTOCOLS))], responses={200: str, 204: None}
    )
    def get(self, request: Request, run_id: str) -> HttpResponse | StreamingHttpResponse:
        run = _run_or_404(request, run_id)
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


def _resume(data: dict[str, Any]) -> ToolCallResume:
    return ToolCallResume(
        decision_id=uuid7(), action=data["action"], result=data.get("payload"), updated_at=now_ms()
    )


def _cancel(kind: str, identifier: str) -> Response:
    """Cancel by id (queued or running, here or elsewhere); 404 when there was nothing to cancel."""
    if not service.cancel(identifier):
        raise not_found(kind, identifier)
    return Response({"status": "cancel_requested", f"{kind}_id": identifier}, status=202)


class RunCancelView(EdgeCheckedView):
    @extend_schema(request=None, responses={202: dict})
    def post(self, request: Request, run_id: str) -> Response:
        _run_or_404(request, run_id)
        return _cancel("run", run_id)


class ThreadCancelView(EdgeCheckedView):
    @extend_schema(request=None, responses={202: dict})
    def post(self, request: Request, thread_id: str) -> Response:
        _thread_or_404(request, thread_id)
        return _cancel("thread", thread_id)


class DispatchCancelView(EdgeCheckedView):
    @extend_schema(request=None, responses={202: dict})
    def post(self, request: Request, dispatch_id: str) -> Response:
        dispatch = service.load_dispatch(dispatch_id)
        if dispatch is None or selectors.owned_thread(_user_id(request), dispatch.thread_id) is None:
            raise not_found("dispatch", dispatch_id)
        return _cancel("dispatch", dispatch_id)


class ThreadInterruptView(EdgeCheckedView):
    @extend_schema(request=None, responses={202: dict})
    def post(self, request: Request, thread_id: str) -> Response:
        _thread_or_404(request, thread_id)
        details = service.interrupt(thread_id)
        if details.active_dispatch is None and details.superseded_count == 0:
            raise not_found("thread", thread_id)
        return Response(
            {
                "status": "interrupt_requested",
                "thread_id": thread_id,
                "superseded_dispatches": details.superseded_count,
                "active_dispatch_id": None
                if details.active_dispatch is None
                else details.active_dispatch.dispatch_id,
            },
            status=202,
        )


def _decide(request: Request, kind: str, identifier: str) -> Response:
    """Deliver a decision to the run (or the thread's run) holding the tool call; 404 when none does."""
    data = _validated(s.DecisionIn, request)
    call_id = data["tool_call_id"]
    if not service.send_decision(identifier, call_id, _resume(data), owner_id=_user_id(request)):
        raise ApiError(
            f"no suspended tool call {call_id} on {kind} {identifier}",
            code="decision_target_not_found",
            status_code=404,
        )
    return Response(
        {"status": "decision_submitted", f"{kind}_id": identifier, "tool_call_id": call_id}, status=202
    )


class ThreadDecisionView(EdgeCheckedView):
    @extend_schema(request=s.DecisionIn, responses={202: dict})
    def post(self, request: Request, thread_id: str) -> Response:
        _thread_or_404(request, thread_id)
        return _decide(request, "thread", thread_id)


class RunDecisionView(EdgeCheckedView):
    @extend_schema(request=s.DecisionIn, responses={202: dict})
    def post(self, request: Request, run_id: str) -> Response:
        _run_or_404(request, run_id)
        return _decide(request, "run", run_id)


# --- thread mailbox and messages ----------------------------------------------------------------------


class ThreadMailboxView(EdgeCheckedView):
    @extend_schema(
        parameters=[
            OpenApiParameter("status", str),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={200: dict},
    )
    def get(self, request: Request, thread_id: str) -> Response:
        _thread_or_404(request, thread_id)
        limit, offset = _page(request)
        try:
            statuses = s.parse_status_filter(request.query_params.get("status"))
        except drf.ValidationError as exc:
            raise ApiError(str(exc.detail["status"]), code="invalid", field="status") from None  # type: ignore[index,call-overload]
        items = service.list_dispatches(thread_id, statuses, limit, offset)
        total = service.count_dispatches(thread_id, statuses)
        return Response(
            {
                "items": [s.dispatch_json(d) for d in items],
                "total": total,
                "has_more": offset + len(items) < total,
            }
        )

    @extend_schema(request=s.MailboxSubmitIn, responses={201: dict})
    def post(self, request: Request, thread_id: str) -> Response:
        user_id = _user_id(request)
        if selectors.thread_taken_by_other(user_id, thread_id):
            raise not_found("thread", thread_id)
        data = _validated(s.MailboxSubmitIn, request)
        key = _idempotency_key(request, data)
        run_request = RunRequest(
            thread_id=thread_id,
            messages=s.to_messages(data["messages"]),
            agent_id=data.get("agent_id"),
            **request_options(data),
        )
        chosen = strategy(data, MultitaskStrategy.ENQUEUE)  # the mailbox queues unless told otherwise

        def action(record: Recorder) -> Outcome:
            def in_transaction(result: service.SubmitResult) -> None:  # the submit's own transaction
                _subscribe(result, data.get("webhook"))
                record(201, _submit_result(result))

            result = service.submit_as(run_request, chosen, owner_id=user_id, in_transaction=in_transaction)
            return 201, _submit_result(result)

        status_code, body = run_once(
            user_id=user_id, key=key, fingerprint=request_hash(request.path, data), action=action
        )
        return Response(body, status=status_code)


def _inject(
    request: Request,
    thread_id: str,
    data: dict[str, Any],
    *,
    agent_id: str | None,
    expected_run_id: str | None = None,
    record: Recorder,
    reply: Callable[[service.SubmitResult], Outcome],
) -> Outcome:
    """spec §5.3 inject_user_input / inject_run_input by mode. The interrupt of `interrupt_then_queue`
    commits on its own first; the submit and the idempotency key's answer (`record`) commit together."""
    user_id = _user_id(request)
    mode = data.get("mode", "queue")
    run_request = RunRequest(thread_id=thread_id, messages=s.to_messages(data["messages"]), agent_id=agent_id)
    if mode == "interrupt_then_queue":
        service.interrupt(thread_id)

    def submit() -> Outcome:
        if mode in ("live_then_queue", "steer"):
            return reply(
                service.submit_live_then_queue(run_request, expected_run_id=expected_run_id, owner_id=user_id)
            )
        resumed = run_request
        if mode == "resume_open_run":
            thread = store.load_thread(thread_id=thread_id)
            run = store.load_run(run_id=thread.open_run_id) if thread and thread.open_run_id else None
            if run is None or run.thread_id != thread_id or not run.is_resumable_waiting:
                raise ApiError(
                    f"run not found: open run for thread {thread_id}", code="run_not_found", status_code=404
                )
            resumed = run_request.with_(agent_id=run.agent_id, continue_run_id=run.run_id)
        return reply(service.submit_background(resumed, owner_id=user_id))

    return in_one_transaction(submit)(record)


class ThreadMessagesView(EdgeCheckedView):
    @extend_schema(
        parameters=[
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
            OpenApiParameter("visibility", str, enum=["all"]),
        ],
        responses={200: dict},
    )
    def get(self, request: Request, thread_id: str) -> Response:
        _thread_or_404(request, thread_id)
        limit, offset = _page(request)
        visibility = request.query_params.get("visibility")
        if visibility not in (None, "", "all", "public"):
            raise ApiError(f"invalid visibility: {visibility}", code="invalid", field="visibility")
        records, total = store.list_message_records(
            thread_id=thread_id, offset=offset, limit=limit, include_internal=visibility == "all"
        )
        return Response(
            {
                "items": [s.message_json(r) for r in records],
                "total": total,
                "has_more": offset + len(records) < total,
            }
        )

    @extend_schema(request=s.ThreadMessagesIn, responses={202: dict})
    def post(self, request: Request, thread_id: str) -> Response:
        _thread_or_404(request, thread_id)
        data = _validated(s.ThreadMessagesIn, request)
        key = _idempotency_key(request, data)

        def reply(result: service.SubmitResult) -> Outcome:
            return 202, _submit_result(result)

        def action(record: Recorder) -> Outcome:
            return _inject(
                request, thread_id, data, agent_id=data.get("agent_id"), record=record, reply=reply
            )

        status_code, body = run_once(
            user_id=_user_id(request), key=key, fingerprint=request_hash(request.path, data), action=action
        )
        return Response(body, status=status_code)


class RunInputsView(EdgeCheckedView):
    @extend_schema(request=s.RunInputsIn, responses={202: dict})
    def post(self, request: Request, run_id: str) -> Response:
        run = _run_or_404(request, run_id)
        data = _validated(s.RunInputsIn, request)
        key = _idempotency_key(request, data)
        mode = data.get("mode", "queue")

        def reply(result: service.SubmitResult) -> Outcome:
            return 202, {
                **_submit_result(result),
                "status": "inputs_accepted",
                "run_status": result.status.value,
            }

        def action(record: Recorder) -> Outcome:
            if mode in ("live_then_queue", "steer"):
                return _inject(
                    request,
                    run.thread_id,
                    data,
                    agent_id=run.agent_id,
                    expected_run_id=run.run_id,
                    record=record,
                    reply=reply,
                )
            if mode != "interrupt_then_queue" and run.is_resumable_waiting:
                resume = RunRequest(
                    thread_id=run.thread_id,
                    messages=s.to_messages(data["messages"]),
                    agent_id=run.agent_id,
                    continue_run_id=run.run_id,
                )
                return in_one_transaction(
                    lambda: reply(service.submit_background(resume, owner_id=_user_id(request)))
                )(record)
            return _inject(request, run.thread_id, data, agent_id=run.agent_id, record=record, reply=reply)

        status_code, body = run_once(
            user_id=_user_id(request), key=key, fingerprint=request_hash(request.path, data), action=action
        )
        return Response(body, status=status_code)


# --- dispatches ---------------------------------------------------------------------------------------


# (thread list / create / read / update / delete / search: thread_views.py)


class DispatchDetailView(EdgeCheckedView):
    @extend_schema(responses={200: dict})
    def get(self, request: Request, dispatch_id: str) -> Response:
        dispatch = service.load_dispatch(dispatch_id)
        if dispatch is None or selectors.owned_thread(_user_id(request), dispatch.thread_id) is None:
            raise not_found("dispatch", dispatch_id)
        return Response(s.dispatch_json(dispatch))
