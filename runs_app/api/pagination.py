"""The one page of every list route: `?limit` (1..MAX_PAGE, default 50; larger is clamped) and `?offset`
(>= 0) select a window, answered as `{"items": [...], "total": n, "has_more": bool}`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.request import Request

from runs_app.api.errors import ApiError

DEFAULT_LIMIT = 50
MAX_PAGE = 200
MAX_OFFSET = 1_000_000_000  # beyond PostgreSQL's bigint OFFSET nothing exists anyway
PARAMETERS = [OpenApiParameter("limit", int), OpenApiParameter("offset", int)]


@dataclass(frozen=True, slots=True)
class Window:
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def of(cls, request: Request) -> Window:
        """The window the query asks for; a bad `limit` or `offset` is a 400 naming it."""
        return cls(
            limit=_int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_PAGE),
            offset=_int_param(request, "offset", 0, minimum=0, maximum=MAX_OFFSET),
        )

    def page(self, items: Sequence[Any], total: int) -> dict[str, Any]:
        """The page body of `items` (this window of `total`)."""
        return {"items": list(items), "total": total, "has_more": self.offset + len(items) < total}


def _int_param(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(f"{name} must be an integer", code="invalid", field=name) from None
    if value < minimum:
        raise ApiError(f"{name} must be >= {minimum}", code="invalid", field=name)
    return min(value, maximum)


PageOut = type[serializers.Serializer[dict[str, Any]]]


def page_out(name: str, items: serializers.BaseSerializer[Any], doc: str) -> PageOut:
    """The schema of a page of `items` (a `many=True` serializer) for the OpenAPI document: the one
    `{items, total, has_more}` shape `Window.page` answers on every list route."""
    fields: dict[str, Any] = {
        "__doc__": doc,
        "__module__": __name__,
        "items": items,
        "total": serializers.IntegerField(),
        "has_more": serializers.BooleanField(),
    }
    page: PageOut = serializers.SerializerMetaclass(name, (serializers.Serializer,), fields)
    return page
