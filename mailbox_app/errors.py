"""Typed errors of the mailbox and run stores (the reference's `StorageError`)."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store error."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class ValidationError(StoreError):
    pass


class VersionConflict(StoreError):
    """A fenced write lost: wrong claim token, not claimed, or a stale dispatch epoch."""

    def __init__(self, message: str, *, expected: int = 0, actual: int = 1) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual
