"""Exceptions. User problems carry a one-line message (str() is complete)."""

from __future__ import annotations

import contextlib
import os


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


@contextlib.contextmanager
def quiet_stderr():
    """libxml2 inside libvirt prints parse warnings ("I/O warning : failed to
    load external entity") straight to fd 2, past registerErrorHandler. The
    same error comes back as the libvirtError we report, so drop the copy."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
