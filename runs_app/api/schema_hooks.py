"""drf-spectacular post-processing: the request headers the API reads, declared on the operations that
read them, so the docs show them and the schemathesis test generates them."""

from __future__ import annotations

from typing import Any

IDEMPOTENT_SUFFIXES = ("/runs", "/runs/wait", "/mailbox", "/messages", "/inputs")
RESUMABLE_SUFFIXES = ("/events",)

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Replays the first answer for this key (at most 255 characters, no control "
    "characters) for AWAKEN_IDEMPOTENCY_TTL_MS; the submit happens once.",
    "schema": {"type": "string", "maxLength": 255},
}
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume the event stream after this stream id (like 1700000000000-0).",
    "schema": {"type": "string"},
}


def declare_request_headers(result: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
    for path, item in result.get("paths", {}).items():
        post = item.get("post")
        if post is not None and path.endswith(IDEMPOTENT_SUFFIXES):
            _add(post, IDEMPOTENCY_KEY)
        get = item.get("get")
        if get is not None and path.endswith(RESUMABLE_SUFFIXES):
            _add(get, LAST_EVENT_ID)
    return result


def _add(operation: dict[str, Any], parameter: dict[str, Any]) -> None:
    parameters = operation.setdefault("parameters", [])
    if not any(p.get("name") == parameter["name"] and p.get("in") == "header" for p in parameters):
        parameters.append(dict(parameter))
