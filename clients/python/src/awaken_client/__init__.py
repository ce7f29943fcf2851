"""A small typed client for the awaken-mailbox run API: `Client` (sync) and `AsyncClient` (async).

from awaken_client import Client

with Client("http://127.0.0.1:8000", token) as client:
    with client.submit_stream("t1", "hello") as stream:
        for event in stream:  # resumes with Last-Event-ID after a dropped connection
            print(event.type, event.data)
"""

from awaken_client.async_client import AsyncClient, AsyncRunStream
from awaken_client.calls import UNSET, RunOptions, ScheduleChanges, ScheduleOptions, SubmitOptions
from awaken_client.client import Client, RunStream
from awaken_client.errors import ApiError
from awaken_client.models import (
    Accepted,
    AttemptUsage,
    Event,
    Fork,
    InboxPolicy,
    InputMessage,
    Message,
    Page,
    ParseError,
    Pause,
    PendingRun,
    Replay,
    Run,
    Schedule,
    ScheduleCreated,
    Submission,
    Termination,
    Thread,
    ThreadDeleted,
    ThreadPause,
    ThreadResume,
    Usage,
)
from awaken_client.resume import StreamPolicy

__all__ = [
    "UNSET",
    "Accepted",
    "ApiError",
    "AsyncClient",
    "AsyncRunStream",
    "AttemptUsage",
    "Client",
    "Event",
    "Fork",
    "InboxPolicy",
    "InputMessage",
    "Message",
    "Page",
    "ParseError",
    "Pause",
    "PendingRun",
    "Replay",
    "Run",
    "RunOptions",
    "RunStream",
    "Schedule",
    "ScheduleChanges",
    "ScheduleCreated",
    "ScheduleOptions",
    "StreamPolicy",
    "Submission",
    "SubmitOptions",
    "Termination",
    "Thread",
    "ThreadDeleted",
    "ThreadPause",
    "ThreadResume",
    "Usage",
]
