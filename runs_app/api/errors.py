"""One error shape for the whole API: {"error": message, "code": machine code, "field": name?}."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from mailbox_app.contract.storage import AlreadyExists, InvalidInput, NotFound, VersionConflict
from mailbox_app.services.mailbox import ActiveRunConflict, ThreadBusy
from runs_app.api.inputs import InputError
from runs_app.services.control import ControlError, NotWaiting


class ApiError(exceptions.APIException):
    """An error with an explicit status, machine code and (optionally) the offending field."""

    def __init__(self, message: str, *, code: str, status_code: int = 400, field: str | None = None) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.field = field
        self.error_code = code


def not_found(what: str, identifier: str) -> ApiError:
    return ApiError(f"{what} not found: {identifier}", code=f"{what}_not_found", status_code=404)


def body(message: str, code: str, field: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"error": message, "code": code}
    if field:
        data["field"] = field
    return data


def _first_validation_error(detail: Any, prefix: str = "") -> tuple[str, str | None]:
    """(message, dotted field) of the first error in a DRF ValidationError detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                name = f"{prefix}[{key}]"
            else:
                name = key if not prefix else f"{prefix}.{key}"
            message, field = _first_validation_error(value, name)
            return message, (None if key == "non_field_errors" and not prefix else field)
    if isinstance(detail, list) and detail:
        for index, value in enumerate(detail):
            if value in ({}, [], ""):
                continue
            nested_prefix = f"{prefix}[{index}]" if isinstance(value, dict | list) else prefix
            return _first_validation_error(value, nested_prefix)
    text = str(detail)
    field = prefix or None
    return (f"{field}: {text}" if field else text), field


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError | InputError):
        return Response(body(str(exc.detail), exc.error_code, exc.field), status=exc.status_code)
    if isinstance(exc, ControlError):  # the run-control service's refusals (runs_app/services/control.py)
        return Response(body(str(exc), exc.code), status=409 if isinstance(exc, NotWaiting) else 404)
    if isinstance(exc, ThreadBusy):  # a `reject` submit: nothing was written
        return Response(body(str(exc), "thread_busy", "multitask_strategy"), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, ActiveRunConflict):
        return Response(body(str(exc), "active_run_conflict"), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, AlreadyExists | VersionConflict):
        return Response(body(str(exc), "conflict"), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, InvalidInput):
        return Response(body(str(exc), "invalid"), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, NotFound | Http404):
        return Response(body(str(exc) or "not found", "not_found"), status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, RequestDataTooBig):
        return Response(body("request body too large", "body_too_large"), status=413)
    if isinstance(exc, exceptions.ValidationError):
        message, field = _first_validation_error(exc.detail)
        return Response(body(message, "invalid", field), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return Response(body(str(exc.detail), "unsupported_media_type"), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, exceptions.ParseError):
        return Response(body(str(exc.detail), "malformed_json"), status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        detail = exc.detail
        message = str(detail.get("detail", detail)) if isinstance(detail, dict) else str(detail)
        response.data = body(message, str(getattr(exc, "default_code", "error")))
    return response
