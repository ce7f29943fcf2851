"""The run options every submit route takes: `metadata`, `after_seconds`, `timeout_s`, `multitask_strategy`.

Each is checked here (a bad value is a 400 naming the field) and turned into the `RunRequest` fields the
mailbox keeps: `metadata` on the new run, `timeout_ms` (its activations' time budget), `start_after_ms`
(the dispatch's `available_at` offset). The strategy's default is the route's own behaviour.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rest_framework import serializers

from mailbox_app.services.mailbox import MultitaskStrategy
from runs_app.api.inputs import InputError, check_json

STRATEGIES = tuple(s.value for s in MultitaskStrategy)
METADATA_MAX_BYTES = 16_384  # of compact UTF-8 JSON
MAX_DELAY_S = 30 * 86_400
MAX_TIMEOUT_S = 30 * 86_400


class MetadataField(serializers.JSONField):
    """A JSON object of at most METADATA_MAX_BYTES (compact UTF-8 JSON)."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError(f"must be a JSON object, not {_json_type(value)}")
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > METADATA_MAX_BYTES:
            raise serializers.ValidationError(
                f"must be at most {METADATA_MAX_BYTES} bytes of JSON (got {size})"
            )
        return value


class SecondsField(serializers.FloatField):
    """A number of seconds: finite, not a boolean, within [minimum, maximum] (`exclusive` minimum)."""

    def __init__(self, *, minimum: float, maximum: float, exclusive: bool = False, **kwargs: Any) -> None:
        super().__init__(required=False, **kwargs)
        self.minimum, self.maximum, self.exclusive = minimum, maximum, exclusive

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise serializers.ValidationError("must be a number of seconds")
        value = float(data)
        too_small = value <= self.minimum if self.exclusive else value < self.minimum
        if not math.isfinite(value) or too_small or value > self.maximum:
            low = "> " if self.exclusive else ">= "
            raise serializers.ValidationError(f"must be {low}{self.minimum:g} and <= {self.maximum:g}")
        return value


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"


class RunOptionsIn(serializers.Serializer[dict[str, Any]]):
    """Base of the submit bodies (runs, threads/{id}/runs, threads/{id}/runs/wait, threads/{id}/mailbox)."""

    metadata = MetadataField(
        required=False, help_text=f"a JSON object stored on the new run (at most {METADATA_MAX_BYTES} bytes)"
    )
    after_seconds = SecondsField(
        minimum=0, maximum=MAX_DELAY_S, help_text="start no earlier than this many seconds from now"
    )
    timeout_s = SecondsField(
        minimum=0,
        maximum=MAX_TIMEOUT_S,
        exclusive=True,
        help_text="each activation of the run may take this long (default AWAKEN_RUN_TIMEOUT_MS)",
    )
    multitask_strategy = serializers.ChoiceField(
        choices=STRATEGIES,
        required=False,
        help_text="when the thread is busy: reject (409), enqueue behind, or interrupt (latest wins)",
    )
    priority = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=255,
        help_text="the dispatch's priority within its thread: 0-255, lower first (default 128)",
    )


def request_options(data: dict[str, Any]) -> dict[str, Any]:
    """The validated options as `RunRequest` fields."""
    timeout_s = data.get("timeout_s")
    return {
        "metadata": data.get("metadata"),
        "timeout_ms": None if timeout_s is None else max(math.ceil(timeout_s * 1000), 1),
        "start_after_ms": math.ceil(float(data.get("after_seconds") or 0) * 1000),
        "priority": data.get("priority"),
    }


def strategy(data: dict[str, Any], default: MultitaskStrategy) -> MultitaskStrategy:
    raw = data.get("multitask_strategy")
    return default if raw is None else MultitaskStrategy(raw)


def metadata_filter(raw: str | None) -> dict[str, Any] | None:
    """`?metadata=<JSON object>` of a run listing (containment); None when absent or empty."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise InputError("metadata must be a JSON object (not valid JSON)", field="metadata") from None
    if not isinstance(value, dict):
        raise InputError(f"metadata must be a JSON object, not {_json_type(value)}", field="metadata")
    check_json(value)
    return value
