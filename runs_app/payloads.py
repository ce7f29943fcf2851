"""The run store's value types (defined beside the mailbox, which must not import runs_app)."""

from mailbox_app.payloads import (
    ChatMessage,
    MessageRecord,
    MessageSeqRange,
    Role,
    RunMessageInput,
    RunPage,
    RunRecord,
    RunRequestSnapshot,
    RunResumeDecision,
    RunWaitingState,
    TerminationReason,
    ThreadRecord,
    ToolCall,
    ToolCallResume,
    Visibility,
    WaitingTicket,
)

__all__ = [
    "ChatMessage",
    "MessageRecord",
    "MessageSeqRange",
    "Role",
    "RunMessageInput",
    "RunPage",
    "RunRecord",
    "RunRequestSnapshot",
    "RunResumeDecision",
    "RunWaitingState",
    "TerminationReason",
    "ThreadRecord",
    "ToolCall",
    "ToolCallResume",
    "Visibility",
    "WaitingTicket",
]
