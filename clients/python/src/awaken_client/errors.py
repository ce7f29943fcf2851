"""The one error type of the client: an answer of 400 or more from the API."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """The API answered `status_code` >= 400 with its error body `{"error", "code", "field"?}`.

    `field` names the offending request field of a 400 (`messages[0].role`, `multitask_strategy`, ...);
    `code` is the machine code (`invalid`, `thread_not_found`, `thread_busy`, `active_run_conflict`, ...).
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status_code} {code or 'error'}: {message}")
        self.status_code = status_code
        self.message = message
        self.code = code
        self.field = field
        self.body = body


def error_of(response: httpx.Response) -> ApiError:
    """The `ApiError` of a (read) error response; a body that is not the API's shape is kept as text."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return ApiError(
            response.status_code,
            body["error"],
            code=None if body.get("code") is None else str(body["code"]),
            field=None if body.get("field") is None else str(body["field"]),
            body=body,
        )
    return ApiError(response.status_code, str(body)[:500] or response.reason_phrase, body=body)


def check(response: httpx.Response) -> httpx.Response:
    """`response` when it is not an error; else its `ApiError` (the body must have been read)."""
    if response.status_code >= 400:
        raise error_of(response)
    return response
