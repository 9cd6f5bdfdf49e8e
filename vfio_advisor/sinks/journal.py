"""journald sink: one entry per finding, one summary entry per run.

Fields (all upper case: journald drops lower-case field names):
  MESSAGE, PRIORITY, SYSLOG_IDENTIFIER=vfio-advisor, MESSAGE_ID (the rule's),
  VFIO_ADVISOR_RULE, _SLUG, _SEVERITY, _SOURCE (hook|daemon|advise),
  _DOMAIN, _DOMAIN_UUID, _CHIPSET, _GUEST_OS, _HOST_BDF, _GUEST_ADDRESS,
  _REMEDY, and _EVIDENCE_<KEY> per evidence item.

The sender is injected (python-systemd's JournalHandler does the same with
sender_function) so tests can record without a journald, and the hook can
use the C sender (systemd._journal.sendv) without importing systemd.journal,
whose uuid/logging imports cost ~25 ms per VM start.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

from vfio_advisor import journal_fields as F
from vfio_advisor.facts.domain import Domain
from vfio_advisor.findings import SYSLOG_PRIORITY, Finding, Inconclusive, Severity
from vfio_advisor.sinks.base import Event, RunSummary

IDENTIFIER = F.IDENTIFIER
JOURNAL_SOCKET = "/run/systemd/journal/socket"
Sender = Callable[[Sequence[str]], None]


def journal_sender() -> Sender | None:
    """systemd's C sender, or None when there is no journald to talk to.

    With no journald, sd_journal_sendv succeeds silently; with a stale
    socket it raises ConnectionRefusedError. So look for the socket first.
    """
    if not os.path.exists(JOURNAL_SOCKET):
        return None
    try:
        from systemd import _journal  # noqa: PLC0415 - lazy, see module docstring
    except ImportError:
        return None
    return lambda fields: _journal.sendv(*fields)


def _field_name(key: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", key.upper()).strip("_")[:60] or "X"


def _value(text: str) -> str:
    # Values may hold newlines (sendv encodes them); NUL would cut them.
    return text.replace("\x00", "")


def finding_fields(f: Finding, domain: Domain | None, source: str) -> list[str]:
    where = f" {f.subject}" if f.subject else ""
    fields = {
        F.MESSAGE: f"{f.domain or '-'}{where}: {f.rule_id} {f.message}",
        F.PRIORITY: str(SYSLOG_PRIORITY[f.severity]),
        F.SYSLOG_IDENTIFIER: IDENTIFIER,
        F.MESSAGE_ID: f.message_id,
        F.RULE: f.rule_id,
        F.SLUG: f.slug,
        F.SEVERITY: str(f.severity),
        F.SOURCE: source,
        F.REMEDY: f.remedy + f.fix_pointer,
    }
    if f.domain:
        fields[F.DOMAIN] = f.domain
    if domain is not None:
        if domain.uuid:
            fields[F.DOMAIN_UUID] = domain.uuid
        fields[F.CHIPSET] = domain.chipset
        fields[F.GUEST_OS] = domain.guest_os
    if f.subject:
        fields[F.HOST_BDF] = f.subject
    if f.guest_address:
        fields[F.GUEST_ADDRESS] = f.guest_address
    for key, value in f.evidence:
        fields[F.EVIDENCE_PREFIX + _field_name(key)] = value
    return [f"{k}={_value(v)}" for k, v in fields.items()]


def summary_fields(summary: RunSummary, source: str) -> list[str]:
    """The run-summary entry, from the counts the hook's RunSummary carries."""
    counts = summary.counts
    finding, domain = summary.finding, summary.domain
    fields = {
        F.MESSAGE: finding.message,
        # notice (5) when the run found something to act on, else info (6)
        F.PRIORITY: "5" if counts.worst >= Severity.WARNING else "6",
        F.SYSLOG_IDENTIFIER: IDENTIFIER,
        F.MESSAGE_ID: finding.message_id,
        F.RULE: finding.rule_id,
        F.SLUG: finding.slug,
        F.SOURCE: source,
        F.FINDINGS: str(counts.total),
        F.ERRORS: str(counts.errors),
        F.WARNINGS: str(counts.warnings),
        F.DEVICES: str(summary.devices),
        F.RULES: " ".join(sorted({f.rule_id for f in summary.findings})),
    }
    if finding.domain:
        fields[F.DOMAIN] = finding.domain
    if domain is not None and domain.uuid:
        fields[F.DOMAIN_UUID] = domain.uuid
    return [f"{k}={_value(v)}" for k, v in fields.items()]


def event_fields(message: str, event: str, priority: int, source: str) -> list[str]:
    """The daemon's own events (started, reconnected, reloaded, ...)."""
    fields = {F.MESSAGE: message, F.PRIORITY: str(priority), F.SYSLOG_IDENTIFIER: IDENTIFIER,
              F.SOURCE: source, F.EVENT: event}
    return [f"{k}={_value(v)}" for k, v in fields.items()]


def inconclusive_fields(note: Inconclusive, source: str) -> list[str]:
    """A finding held back because the sample proves nothing: an info entry
    with the rule it is about, never the rule's MESSAGE_ID (no finding).
    Its MESSAGE names the domain and device as a finding's does: on a host
    with many guests `journalctl -t vfio-advisor` shows MESSAGE alone, and
    "held back" keeps it apart from the rule's finding."""
    where = f" {note.subject}" if note.subject else ""
    message = f"{note.domain or '-'}{where}: {note.rule_id} held back: {note.message}"
    fields = {F.MESSAGE: message, F.PRIORITY: "6", F.SYSLOG_IDENTIFIER: IDENTIFIER,
              F.SOURCE: source, F.EVENT: note.kind, F.RULE: note.rule_id}
    if note.domain:
        fields[F.DOMAIN] = note.domain
    if note.subject:
        fields[F.HOST_BDF] = note.subject
    return [f"{k}={_value(v)}" for k, v in fields.items()]


def stderr_sender(stream=None) -> Sender:
    """Fallback without journald: one line per entry on stderr, which libvirt
    keeps in /var/log/libvirt/libvirtd.log for hooks."""
    def send(fields: Sequence[str]) -> None:
        values = dict(f.split("=", 1) for f in fields)
        out = stream or sys.stderr
        out.write(f"vfio-advisor: {values.get('MESSAGE', '')}\n")
        out.flush()
    return send


class JournalSink:
    def __init__(self, source: str, sender: Sender | None = None):
        self.source = source
        self.sender = sender or journal_sender() or stderr_sender()
        self._fallback = stderr_sender()

    def _send(self, fields: list[str]) -> None:
        try:
            self.sender(fields)
        except OSError:
            # Stale socket (journald gone): never fail, say it on stderr instead.
            self._fallback(fields)

    def begin(self, facts) -> None:
        pass  # each entry carries its domain's fields

    def emit(self, finding: Finding, domain: Domain | None) -> None:
        self._send(finding_fields(finding, domain, self.source))

    def event(self, event: Event) -> None:
        """A ServiceEvent becomes an entry with VFIO_ADVISOR_EVENT; raises
        OSError if journald is gone (the daemon then writes to stderr). An
        Inconclusive note becomes an info entry (EVENT=inconclusive). Samples
        are not logged: the journal gets findings, once per change."""
        if event.kind == "service":
            self.sender(event_fields(event.message, event.name, event.priority, self.source))
        elif event.kind == "inconclusive":
            self._send(inconclusive_fields(event, self.source))

    def close(self, summary: RunSummary | None = None) -> None:
        if summary is not None:
            self._send(summary_fields(summary, self.source))
