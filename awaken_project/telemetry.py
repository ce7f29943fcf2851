"""OpenTelemetry tracing for this deployment: off unless an exporter is configured.

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, or
`OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`); `OTEL_TRACES_EXPORTER=none` or
`OTEL_SDK_DISABLED=true` keeps it off whatever else is set (awaken_project/environment.py checks the
values at start-up). Off, this module imports nothing of OpenTelemetry and installs nothing: the
project's spans (mailbox_app/observability/tracing.py) stay no-ops.

On, each process — the web server (awaken_project/asgi.py), every Celery worker process and beat
(awaken_project/celery.py) — gets a tracer provider that batches spans to the exporter, and the official
instrumentations: Django (every HTTP request, a server span continuing an incoming `traceparent`),
Celery (a span per task sent and run, the context carried in the message headers: the doorbell's
consumer continues the submit's trace), psycopg (every SQL statement) and Redis (every command). The
exporter reads the standard OTEL_EXPORTER_OTLP_* variables (headers, timeout, certificate);
`OTEL_SERVICE_NAME` names the service (default `awaken-<process>`: web, worker, beat).
docs/observability.md says how to point it at a collector.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

EXPORTERS = ("otlp", "console", "none")
_guard = threading.Lock()
_configured_pid = 0


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment configures an exporter (and does not disable the SDK)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    return bool(exporter or endpoint.strip())


def configure(process: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on in this process when the environment asks for it (once per process: a forked
    child configures its own); whether it is on."""
    if not wanted(environ):
        return False
    env = os.environ if environ is None else environ
    exporter = _exporter(env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp")
    install(_provider(process, env, exporter, batch=True))
    return True


def install(provider: TracerProvider, *, set_global: bool = True) -> None:
    """Instrument Django, Celery, psycopg and Redis with `provider` (made the process's global one with
    `set_global`) and turn the project's spans on; once per process (tests pass a provider with an
    in-memory exporter, and `uninstall` afterwards)."""
    global _configured_pid
    with _guard:
        if _configured_pid == os.getpid():
            return
        from opentelemetry import trace  # noqa: PLC0415 - only when tracing is on
        from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415
        from opentelemetry.instrumentation.django import DjangoInstrumentor  # noqa: PLC0415
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor  # noqa: PLC0415
        from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

        from mailbox_app.observability import tracing  # noqa: PLC0415

        if set_global:
            trace.set_tracer_provider(provider)
        celery = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        for instrumentor in (DjangoInstrumentor(), celery, RedisInstrumentor()):
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=provider)
        psycopg = PsycopgInstrumentor()
        if not psycopg.is_instrumented_by_opentelemetry:
            psycopg.instrument(tracer_provider=provider, enable_commenter=False)
        tracing.enable(provider)
        _configured_pid = os.getpid()


def uninstall() -> None:
    """Undo `install` (tests): the instrumentations removed, the project's spans off again."""
    global _configured_pid
    with _guard:
        if not _configured_pid:
            return
        from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415
        from opentelemetry.instrumentation.django import DjangoInstrumentor  # noqa: PLC0415
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor  # noqa: PLC0415
        from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

        from mailbox_app.observability import tracing  # noqa: PLC0415

        celery = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        for instrumentor in (DjangoInstrumentor(), celery, RedisInstrumentor(), PsycopgInstrumentor()):
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
        tracing.disable()
        _configured_pid = 0


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter()
    # otlp over HTTP/protobuf: it reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT, …
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

    return OTLPSpanExporter()


def provider_for(process: str, env: Mapping[str, str], exporter: SpanExporter, *, batch: bool) -> Any:
    """A tracer provider named for `process` sending to `exporter` (batched, or each span at its end)."""
    return _provider(process, env, exporter, batch=batch)


def _provider(process: str, env: Mapping[str, str], exporter: SpanExporter, *, batch: bool) -> Any:
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415

    name = env.get("OTEL_SERVICE_NAME", "").strip() or f"awaken-{process}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return provider
