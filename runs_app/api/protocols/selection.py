"""Which protocol a request asks for (`?protocol=native|ai-sdk|ag-ui`), and its stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from rest_framework.request import Request

from mailbox_app.realtime.events import RunEvent
from runs_app.api.inputs import InputError
from runs_app.api.protocols import ag_ui, ai_sdk
from runs_app.api.protocols.framing import START, EventEncoder, encode_stream

NATIVE = "native"
PARAM = "protocol"
_ENCODERS: dict[str, Callable[..., EventEncoder]] = {
    ai_sdk.NAME: ai_sdk.AiSdkEncoder,
    ag_ui.NAME: ag_ui.AgUiEncoder,
}
_BODIES: dict[str, Callable[[Any], Any]] = {ai_sdk.NAME: ai_sdk.submit_body, ag_ui.NAME: ag_ui.submit_body}
_HEADERS = {ai_sdk.NAME: ai_sdk.HEADERS, ag_ui.NAME: ag_ui.HEADERS}
PROTOCOLS = (NATIVE, *_ENCODERS)


def requested_protocol(request: Request) -> str:
    """The `protocol` query parameter (default `native`, this project's own event names); 400 otherwise."""
    value = request.query_params.get(PARAM) or NATIVE
    if value not in PROTOCOLS:
        raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}", field=PARAM)
    return value


def submit_body(protocol: str, body: Any) -> Any:
    """A front end's own submit body (`useChat`'s, AG-UI's `RunAgentInput`) in this API's terms."""
    translate = _BODIES.get(protocol)
    return body if translate is None else translate(body)


def response_headers(protocol: str) -> dict[str, str]:
    return dict(_HEADERS.get(protocol, {}))


def encode(
    protocol: str,
    events: AsyncIterator[RunEvent | None],
    *,
    run_id: str,
    thread_id: str,
    resume_after: str = START,
) -> AsyncIterator[str]:
    """`events` — the run's stream from its start — as `protocol`'s frames after `resume_after`."""
    encoder = _ENCODERS[protocol](run_id=run_id, thread_id=thread_id)
    return encode_stream(events, encoder, resume_after=resume_after)
