"""The OpenAPI schema types every response: each operation's success answers have a body schema (a
component with properties, or the event stream's string), never a bare or free-form object; each 4xx
it lists is the error shape `{error, code, field?}`."""

from __future__ import annotations

from typing import Any

import pytest
from drf_spectacular.generators import SchemaGenerator

METHODS = ("get", "post", "put", "patch", "delete")
ERROR_REF = "#/components/schemas/ErrorOut"
SCHEMA_PATH = "/api/v1/schema/"  # the OpenAPI document itself: a free-form object by definition
NO_BODY = {"204"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return dict(SchemaGenerator().get_schema(request=None, public=True))  # type: ignore[no-untyped-call]


def _operations(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, item in schema["paths"].items()
        if path != SCHEMA_PATH
        for method, operation in item.items()
        if method in METHODS
    ]


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    name = ref.removeprefix("#/components/schemas/")
    return dict(schema["components"]["schemas"][name])


def _untyped(schema: dict[str, Any], node: dict[str, Any]) -> str | None:
    """Why a response body schema says nothing about the body, or None when it is typed."""
    resolved = _resolve(schema, node)
    if not resolved:
        return "an empty schema"
    if resolved.get("type") == "array":
        return _untyped(schema, resolved.get("items") or {})
    if resolved.get("type") == "object" or "properties" in resolved:
        return None if resolved.get("properties") else "an object without properties"
    return None if resolved.get("type") in ("string", "integer", "number", "boolean") else f"{resolved}"


def test_the_schema_lists_every_route(schema: dict[str, Any]) -> None:
    assert len(_operations(schema)) >= 27


def test_every_success_answer_has_a_typed_body(schema: dict[str, Any]) -> None:
    problems = []
    for label, operation in _operations(schema):
        successes = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
        if not successes:
            problems.append(f"{label}: no success answer")
        for code, response in successes.items():
            content = response.get("content") or {}
            if code in NO_BODY:
                if content:
                    problems.append(f"{label} {code}: a body on a no-content answer")
                continue
            if not content:
                problems.append(f"{label} {code}: no body schema")
            for media_type, body in content.items():
                why = _untyped(schema, body.get("schema") or {})
                if why is not None:
                    problems.append(f"{label} {code} {media_type}: {why}")
                if media_type == "text/event-stream" and body["schema"].get("type") != "string":
                    problems.append(f"{label} {code}: the event stream is not a string")
    assert problems == []


def test_streams_are_declared_as_event_streams(schema: dict[str, Any]) -> None:
    def streams(path: str, method: str) -> bool:
        responses = schema["paths"][path][method]["responses"]
        return any("text/event-stream" in (r.get("content") or {}) for r in responses.values())

    assert streams("/api/v1/runs", "post")
    assert streams("/api/v1/threads/{thread_id}/runs", "post")
    assert streams("/api/v1/runs/{run_id}/events", "get")
    assert not streams("/api/v1/runs", "get")  # a page of runs is JSON only


def test_every_4xx_is_the_error_shape(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["ErrorOut"]
    assert set(error["properties"]) == {"error", "code", "field"}
    assert set(error["required"]) == {"error", "code"}
    problems = []
    for label, operation in _operations(schema):
        errors = {code: r for code, r in operation["responses"].items() if code.startswith("4")}
        if not errors:
            problems.append(f"{label}: declares no error answer")
        for code, response in errors.items():
            content = response.get("content") or {}
            if set(content) != {"application/json"}:
                problems.append(f"{label} {code}: error media types {sorted(content)}")
            for body in content.values():
                if body.get("schema", {}).get("$ref") != ERROR_REF:
                    problems.append(f"{label} {code}: {body.get('schema')}")
    assert problems == []
