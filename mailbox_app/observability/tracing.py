"""The project's own OpenTelemetry spans: `mailbox.submit`, `mailbox.attempt`, `mailbox.agent`,
`mailbox.step`, `mailbox.finish`, `mailbox.webhook_delivery` (docs/observability.md).

A no-op until `enable()` — which the deployment calls when an exporter is configured
(awaken_project/telemetry.py) — and then nothing of OpenTelemetry is imported by this module: `span()`
returns one shared do-nothing context manager, `carrier()` None. So the hot path pays a global read per
span when tracing is off.

A run crosses processes twice: the doorbell (a Celery message, which the Celery instrumentation carries
the context on) and the durable request. The same dispatch may be run by a later doorbell (a retry, the
sweep, a hand-back), whose context is not the submit's, so the submit's context is also kept on the
dispatch's request (`RunRequest.trace_context`, in its snapshot's extras) and every attempt links to it.
Attribute values are ids and counts only: never a claim token, a message or a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:  # only once enabled is any of it imported
    from opentelemetry.trace import Tracer

P = ParamSpec("P")
T = TypeVar("T")
TRACER_NAME = "awaken.mailbox"
SUBMIT, ATTEMPT, AGENT, STEP, FINISH, WEBHOOK = (
    "mailbox.submit",
    "mailbox.attempt",
    "mailbox.agent",
    "mailbox.step",
    "mailbox.finish",
    "mailbox.webhook_delivery",
)

_tracer: Tracer | None = None


class SpanLike(Protocol):
    def set_attribute(self, key: str, value: Any) -> Any: ...


class _NoSpan:
    """What `span()` yields while tracing is off: every call does nothing."""

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NO_SPAN = _NoSpan()


def enabled() -> bool:
    return _tracer is not None


def enable(tracer_provider: Any = None) -> None:
    """Start making spans, from `tracer_provider` (the global one when None)."""
    global _tracer
    from opentelemetry import trace  # noqa: PLC0415 - imported only when tracing is on

    _tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)


def disable() -> None:
    global _tracer
    _tracer = None


def span(
    name: str, attributes: Mapping[str, Any] | None = None, *, link: Mapping[str, str] | None = None
) -> AbstractContextManager[SpanLike]:
    """A span named `name`, current inside the `with`; linked to the context `link` carries (a
    `carrier()` stored earlier) when given. While tracing is off: `NO_SPAN`."""
    if _tracer is None:
        return NO_SPAN
    return _live_span(_tracer, name, attributes, link)


@contextmanager
def _live_span(
    tracer: Tracer, name: str, attributes: Mapping[str, Any] | None, link: Mapping[str, str] | None
) -> Iterator[SpanLike]:
    links = _links(link)
    with tracer.start_as_current_span(name, attributes=_clean(attributes), links=links) as current:
        yield current


def set_attributes(current: SpanLike, attributes: Mapping[str, Any]) -> None:
    """Attributes known only once the span ran (the run id a claim did not carry, an outcome)."""
    if current is NO_SPAN:
        return
    for key, value in _clean(attributes).items():
        current.set_attribute(key, value)


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers (`traceparent`, …) to keep with durable state; None
    while tracing is off or outside any span."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject  # noqa: PLC0415

    headers: dict[str, str] = {}
    inject(headers)
    return headers or None


def add_link(current: SpanLike, link: Mapping[str, str] | None) -> None:
    """Link `current` to the context a stored carrier names (the attempt to its submit)."""
    if current is NO_SPAN or not link:
        return
    for each in _links(link):
        current.add_link(each.context, each.attributes)  # type: ignore[attr-defined]


def traced_submit(submit: Callable[P, T]) -> Callable[P, T]:
    """A submit path of the Mailbox service (mailbox_app/services/mailbox.py) inside a `mailbox.submit`
    span: its request (the first argument) gets the span's context (`trace_context`, kept with the
    dispatch's request), and the span the thread, run and dispatch ids of what it answered."""

    @wraps(submit)
    def traced(*args: P.args, **kwargs: P.kwargs) -> T:
        if _tracer is None:
            return submit(*args, **kwargs)
        request, rest = args[0], args[1:]
        with span(SUBMIT, {"awaken.thread_id": getattr(request, "thread_id", None)}) as current:
            with_context = request.with_(trace_context=carrier())  # type: ignore[attr-defined]
            answer = submit(with_context, *rest, **kwargs)  # type: ignore[arg-type]
            set_attributes(current, _ids(answer))
            return answer

    return traced


def _ids(answer: Any) -> dict[str, Any]:
    return {
        "awaken.thread_id": getattr(answer, "thread_id", None),
        "awaken.run_id": getattr(answer, "run_id", None),
        "awaken.dispatch_id": getattr(answer, "dispatch_id", None),
    }


def _links(link: Mapping[str, str] | None) -> list[Any]:
    if not link:
        return []
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.propagate import extract  # noqa: PLC0415

    context = trace.get_current_span(extract(dict(link))).get_span_context()
    if not context.is_valid:
        return []
    return [trace.Link(context, {"awaken.link": "submit"})]


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenTelemetry takes str, bool, int and float values; None means "not known": left out."""
    if not attributes:
        return {}
    return {k: v for k, v in attributes.items() if isinstance(v, str | bool | int | float) and v != ""}
