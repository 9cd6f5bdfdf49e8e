"""Exceptions. User problems carry a one-line message (str() is complete)."""

from __future__ import annotations


class AdvisorError(Exception):
    """A problem the user can act on. str() is a complete one-line message."""


class UsageError(AdvisorError):
    """Bad command-line use, or input that cannot be what it claims to be (exit 2)."""


class DomainXMLError(UsageError):
    """XML that cannot be a libvirt domain."""


class ConnectionFailed(AdvisorError):
    """libvirt could not be reached (exit 2)."""


class FactUnavailable(AdvisorError):
    """A host file could not be read. `path` is relative to the host root."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

