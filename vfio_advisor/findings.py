"""Severity and Finding: what rules produce and sinks consume."""

from __future__ import annotations

from typing import NamedTuple

import enum


class Severity(enum.IntEnum):
    # Ordered so that max() gives the worst. Values are not syslog priorities;
    # see SYSLOG_PRIORITY for those.
    INFO = 1
    WARNING = 2
    ERROR = 3

    def __str__(self) -> str:
        return self.name.lower()


# journald PRIORITY (syslog levels, sys/syslog.h).
SYSLOG_PRIORITY = {Severity.INFO: 6, Severity.WARNING: 4, Severity.ERROR: 3}


class Finding(NamedTuple):
    """One piece of advice about one subject, carrying everything a sink
    needs (so no sink looks anything up in the rule registry).

    `subject` is the host BDF for device findings, or None for the domain as a
    whole. `message` holds the observed values; `remedy` is worded for this
    domain (guest OS, IDs) and falls back on the rule's generic remedy.
    Made by `Rule.finding`, which fills in the rule's severity, slug, title
    and MESSAGE_ID.
    """

    rule_id: str
    domain: str | None
    subject: str | None
    message: str
    remedy: str
    guest_address: str | None
    # Files or facts behind the finding: {"proc/interrupts IRQ 16": "ehci_hcd:usb1, ..."}.
    evidence: tuple[tuple[str, str], ...]
    severity: Severity
    slug: str
    title: str
    message_id: str  # journald MESSAGE_ID, 32 hex digits
    # The sentence that points at the tool that computes this finding's fix
    # (the rule's `fix`), with its leading space: every sink shows
    # `remedy + fix_pointer`, so `remedy` itself stays plain prose. Empty for
    # rules without a fix, and where the fix's outcome replaced it (advise).
    fix_pointer: str = ""

    def sort_key(self) -> tuple:
        return (-int(self.severity), self.rule_id, self.domain or "", self.subject or "")

    @property
    def key(self) -> tuple[str, str]:
        """Which finding of its domain this is, across two analyses (fix's
        re-analysis, advise's "fix" object per finding): the rule and the
        host device, or for an emulated device (no host BDF) its guest
        address, so that two emulated NICs are two findings."""
        return (self.rule_id, self.subject or self.guest_address or "")


class RunCounts(NamedTuple):
    """A run's findings counted by severity, once for the run summary's message and its journal fields."""

    total: int
    errors: int
    warnings: int
    infos: int
    worst: Severity  # INFO when there is none

    @classmethod
    def of(cls, findings) -> "RunCounts":
        by = {s: 0 for s in Severity}
        for f in findings:
            by[f.severity] += 1
        return cls(sum(by.values()), by[Severity.ERROR], by[Severity.WARNING], by[Severity.INFO],
                   max((s for s in Severity if by[s]), default=Severity.INFO))


class Inconclusive(NamedTuple):
    """A finding held back because the sample proves nothing either way (a
    counter that did not move while the device may simply have been idle).
    Sinks get it as an event (sinks/base.py) and say it once."""

    kind = "inconclusive"
    rule_id: str  # the rule whose finding is held back
    domain: str | None
    subject: str | None  # host BDF
    message: str  # what was seen, and what to do for a conclusive sample
