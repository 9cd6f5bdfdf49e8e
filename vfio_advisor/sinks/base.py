"""The sink protocol: every output takes findings one by one and is closed
once. Text, JSON, journal and metrics sinks all follow it, so a shell hands
findings to whichever sinks the user chose without knowing their format.

Report sinks (text, JSON) also want the facts of each analysed domain, to
group findings under the domain and its devices: `analysed(facts)` comes
before that domain's findings.
"""

from __future__ import annotations

from typing import Protocol, TextIO, runtime_checkable

from vfio_advisor.facts.domain import Domain
from vfio_advisor.facts.model import DomainFacts, HostFacts
from vfio_advisor.findings import Finding


@runtime_checkable
class Sink(Protocol):
    def emit(self, finding: Finding, domain: Domain | None) -> None: ...

    def close(self) -> None: ...


class ReportSink:
    """Collects a Report (sinks/report.py) and renders it at close()."""

    def __init__(self, out: TextIO, host_root: str, host: HostFacts | None,
                 errors: list[tuple[str, str]] | None = None):
        from vfio_advisor.sinks.report import Report  # noqa: PLC0415

        self.out = out
        self.report = Report(host_root=host_root, host=host, errors=list(errors or []))

    def analysed(self, facts: DomainFacts) -> None:
        from vfio_advisor.sinks.report import DomainReport  # noqa: PLC0415

        self.report.domains.append(DomainReport(facts, []))

    def emit(self, finding: Finding, domain: Domain | None) -> None:
        for d in reversed(self.report.domains):
            if d.facts.domain.name == finding.domain:
                d.findings.append(finding)
                return
        raise ValueError(f"finding for {finding.domain!r} before analysed()")

    def render(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for d in self.report.domains:
            d.findings.sort(key=Finding.sort_key)
        self.render()
