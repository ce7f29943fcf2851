"""The edge every API view stands on: path identifiers and query parameters checked before the handler,
the body validated by a serializer, the caller's id, and the ownership checks (another user's thread or
run is a 404)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers as drf
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.storage import RunRecord, ThreadRecord
from runs_app.api.auth import CachedTokenAuthentication
from runs_app.api.errors import ApiError, exception_handler, not_found
from runs_app.api.inputs import (
    IDEMPOTENCY_KEY_MAX,
    PATH_ID_MAX,
    InputError,
    StrictJSONParser,
    check_query,
    normalize_id,
)
from runs_app.services import selectors


class EdgeCheckedView(APIView):
    """Base of every API view: path identifiers are normalized (`normalize_id`) before the handler sees
    them and query parameters are checked; errors surface after authentication (401 comes first)."""

    # The API's own policy, not the host's REST_FRAMEWORK defaults (a host project sets nothing for it):
    # a token (or a session) and an authenticated user, strict JSON in, JSON out, this API's error body,
    # drf-spectacular's schema. Throttling stays the host's (REST_FRAMEWORK's DEFAULT_THROTTLE_*).
    # The token is looked up in a per-process cache with immediate revocation (runs_app/api/auth.py).
    authentication_classes = [CachedTokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [StrictJSONParser]
    renderer_classes = [JSONRenderer]
    schema = AutoSchema()

    _input_error: InputError | None = None

    def get_exception_handler(self) -> Any:
        return exception_handler

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
        try:
            super().initial(request, *args, **kwargs)
        except (NotAuthenticated, AuthenticationFailed):
            # DRF checks throttles after permissions, so a caller without valid credentials would get
            # 401 forever, never counted: count it (the host's anonymous rate) before the 401
            self.check_throttles(request)
            raise
        if self._input_error is not None:
            raise self._input_error
        check_query(request.query_params)


def validated(
    serializer_class: type[drf.Serializer[Any]], request: Request, body: Any = None
) -> dict[str, Any]:
    """`body` (default: the request's) validated by `serializer_class`."""
    body = request.data if body is None else body
    if not isinstance(body, dict):
        raise ApiError("request body must be a JSON object", code="invalid")
    serializer = serializer_class(data=body)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def user_id(request: Request) -> int:
    pk = request.user.pk
    assert pk is not None  # IsAuthenticated ran first
    return int(pk)


def thread_or_404(request: Request, thread_id: str) -> ThreadRecord:
    thread = selectors.owned_thread(user_id(request), thread_id)
    if thread is None:
        raise not_found("thread", thread_id)
    return thread


def run_or_404(request: Request, run_id: str) -> RunRecord:
    run = selectors.owned_run(user_id(request), run_id)
    if run is None:
        raise not_found("run", run_id)
    return run


def not_taken_or_404(request: Request, thread_id: str) -> ThreadRecord | None:
    """A thread id a submit may use: unknown (it creates the thread; None) or the caller's (returned)."""
    taken, thread = selectors.submit_target(user_id(request), thread_id.strip())
    if taken:
        raise not_found("thread", thread_id)
    return thread


def idempotency_key(request: Request, data: dict[str, Any]) -> str | None:
    """The body's `idempotency_key` (taken out of `data`), else the `Idempotency-Key` header."""
    in_body = data.pop("idempotency_key", None)
    if in_body:
        return normalize_id(in_body, field="idempotency_key", max_length=IDEMPOTENCY_KEY_MAX)
    header = request.headers.get("Idempotency-Key")
    if not header:
        return None
    return normalize_id(header, field="Idempotency-Key", max_length=IDEMPOTENCY_KEY_MAX)


def run_status_param(request: Request) -> RunStatus | None:
    raw = request.query_params.get("status")
    if not raw:
        return None
    try:
        return RunStatus(raw)
    except ValueError:
        raise ApiError(f"invalid status filter: {raw}", code="invalid", field="status") from None
