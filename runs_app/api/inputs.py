"""Untrusted input at the edge of the API, checked once before anything reaches PostgreSQL or Redis.

- identifiers (path parameters, the `thread_id` query parameter and body field, `Idempotency-Key`):
  `normalize_id` trims, requires 1..column-length characters and no control characters;
- query parameters: no NUL / lone surrogate in any name or value;
- JSON bodies (`StrictJSONParser`): at most `MAX_JSON_DEPTH` levels, finite numbers, and no NUL or lone
  surrogate in any string or key (PostgreSQL text/jsonb cannot hold them; UTF-8 cannot encode them).

Every failure is an `InputError`: a 400 in the API's error shape naming the field (errors.py). This
module is imported by DRF's settings (the parser), so it must not import rest_framework.views.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import IO, Any, NoReturn

from django.conf import settings
from django.http import QueryDict
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils import json as drf_json

# Column lengths of the identifiers (runs_app.models / mailbox_app.models).
THREAD_ID_MAX = 128
RUN_ID_MAX = 64
DISPATCH_ID_MAX = 64
AGENT_ID_MAX = 128
IDEMPOTENCY_KEY_MAX = 255
SCHEDULE_ID_MAX = 64
PATH_ID_MAX = {
    "thread_id": THREAD_ID_MAX,
    "run_id": RUN_ID_MAX,
    "dispatch_id": DISPATCH_ID_MAX,
    "schedule_id": SCHEDULE_ID_MAX,
}

MAX_JSON_DEPTH = 64


class InputError(APIException):
    """A 400 naming the offending field; rendered by errors.exception_handler like ApiError."""

    status_code = 400

    def __init__(self, message: str, *, code: str = "invalid", field: str | None = None) -> None:
        super().__init__(detail=message, code=code)
        self.error_code = code
        self.field = field


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # C0, DEL, C1 controls and surrogates
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # what PostgreSQL text/jsonb and UTF-8 refuse


def printable(text: str) -> str:
    """`text` with control characters and surrogates escaped, safe to echo in an error body."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def id_problem(value: str, *, max_length: int) -> str | None:
    """Why the (already trimmed) identifier is unacceptable, or None."""
    if not value:
        return "cannot be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters (got {len(value)})"
    bad = _CONTROL.search(value)
    if bad is not None:
        return f"must not contain control characters (found \\u{ord(bad.group()):04x})"
    return None


def normalize_id(value: str, *, field: str, max_length: int) -> str:
    """The one identifier normalization every route uses: trimmed, 1..max_length, no control chars."""
    trimmed = value.strip()
    problem = id_problem(trimmed, max_length=max_length)
    if problem is not None:
        raise InputError(f"{field} {problem}", code="invalid", field=field)
    return trimmed


def optional_id(value: str | None, *, field: str, max_length: int) -> str | None:
    return None if value is None else normalize_id(value, field=field, max_length=max_length)


def check_text(value: str, *, field: str) -> None:
    bad = _UNSTORABLE.search(value)
    if bad is not None:
        raise InputError(
            f"{printable(field)} must not contain \\u{ord(bad.group()):04x}"
            " (NUL characters and lone surrogates cannot be stored)",
            code="invalid",
            field=printable(field),
        )


def check_query(params: QueryDict) -> None:
    for name, values in params.lists():
        check_text(name, field=name)
        for value in values:
            check_text(value, field=name)


def check_json(value: Any) -> None:
    """Depth, finite numbers and storable strings of a parsed JSON value; iterative (no recursion)."""
    stack: list[tuple[Any, str, str, int]] = [(value, "", "", 0)]  # node, path, top-level key, depth
    while stack:
        node, path, top, depth = stack.pop()
        if isinstance(node, str):
            check_text(node, field=path or "body")
        elif isinstance(node, float) and not math.isfinite(node):
            raise InputError(
                f"{path or 'body'}: number out of range", code="invalid", field=printable(path) or None
            )
        elif isinstance(node, dict | list):
            if depth >= MAX_JSON_DEPTH:
                _too_deep(top or None)
            if isinstance(node, dict):
                for key, child in node.items():
                    child_path = f"{path}.{key}" if path else key
                    check_text(key, field=child_path)
                    stack.append((child, child_path, top or key, depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", top, depth + 1) for i, child in enumerate(node))


def _too_deep(field: str | None) -> NoReturn:
    where = f"{printable(field)}: " if field else ""
    raise InputError(
        f"{where}JSON nested deeper than {MAX_JSON_DEPTH} levels",
        code="json_too_deep",
        field=printable(field) if field else None,
    )


def _top_level_key_of_deep_nesting(text: str) -> str | None:
    """The top-level key under which `text` nests deeper than MAX_JSON_DEPTH (only called after the
    decoder gave up with RecursionError, so `text` is known to be pathological)."""
    depth = 0
    in_string = escaped = False
    start = 0
    last_key: str | None = None
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if depth == 1:
                    candidate = text[start:index]
                    if text[index + 1 :].lstrip().startswith(":"):
                        last_key = candidate
        elif char == '"':
            in_string, start = True, index + 1
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return last_key
        elif char in "]}":
            depth -= 1
    return last_key


class StrictJSONParser(JSONParser):
    """DRF's JSON parser plus the checks above; a too-deep document is a 400, never a RecursionError."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding)
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        parse_constant = drf_json.strict_constant if self.strict else None
        try:
            data = drf_json.loads(text, parse_constant=parse_constant)
        except RecursionError:
            _too_deep(_top_level_key_of_deep_nesting(text))
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        check_json(data)
        return data
