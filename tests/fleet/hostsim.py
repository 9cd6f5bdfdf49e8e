"""A simulated passthrough host for the fleet tier: the lab's real captures
(lab/captures, see ORIGIN.md) replayed moment by moment through the
product's runtime Watcher, with the guest's /proc/uptime as its clock, and
the Watcher's state turned into the Prometheus renderer's inputs.

The core imports are kept here, in one place, so that the issue-11 refactor
(fact types moving, the metrics sink) has one file to repoint.

Until the daemon writes the new metrics format itself (the coordinator wires
vfio_advisor.sinks.prometheus into the daemon's metrics sink), this module is
the bridge: `device_metrics` and `open_findings` below are the mapping the
sink must do.
"""

from __future__ import annotations

from pathlib import Path

from vfio_advisor import __version__
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.daemon.state import StateStore
from vfio_advisor.daemon.watch import RuntimeConfig, Watcher
from vfio_advisor.sinks.base import CallbackSink
from vfio_advisor.sinks.prometheus import DeviceMetrics, OpenFinding, render

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
DOMAINS = REPO / "tests/data/domains/lab"

# Rules whose finding stays open until the device's state changes; VA6002
# (switched to MSI) closes VA6001 of the same device. Every other daemon
# rule is an event and stays open for the run once reported.
CLOSES = {"VA6002": "VA6001"}


def uptime(moment: Path) -> float:
    return float((moment / "proc/uptime").read_text().split()[0])


class SimulatedHost:
    def __init__(self, domain: str, moments: list[str], settle: float = 0.3,
                 storm_rate: float = 1e9):
        self.moments = [CAPTURES / m for m in moments]
        self.now = uptime(self.moments[0])
        self.emitted = []
        self.watcher = Watcher(HostRoot(str(self.moments[0])),
                               RuntimeConfig(settle=settle, storm_rate=storm_rate, storm_samples=1),
                               CallbackSink(lambda f, d: self.emitted.append(f)), StateStore(None),
                               clock=lambda: self.now, pci_ids=PciIds(None))
        self.watcher.add_domain(parse_domain_xml((DOMAINS / f"{domain}.xml").read_bytes()),
                                started_at=self.now)
        self.step_index = -1

    def step(self) -> str:
        """Sample the next moment; its name."""
        self.step_index += 1
        moment = self.moments[self.step_index]
        self.now = uptime(moment)
        self.watcher.host = HostRoot(str(moment))
        self.watcher.sample()
        return moment.name

    @property
    def done(self) -> bool:
        return self.step_index + 1 >= len(self.moments)

    def device_metrics(self) -> list[DeviceMetrics]:
        return [DeviceMetrics(d.domain, d.bdf, d.mode, d.count, d.observable)
                for d in self.watcher.snapshot()]

    def open_findings(self) -> list[OpenFinding]:
        open_: dict[tuple, OpenFinding] = {}
        for f in self.emitted:
            if f.rule_id in CLOSES:
                open_.pop((f.domain, f.subject, CLOSES[f.rule_id]), None)
                continue
            open_[(f.domain, f.subject, f.rule_id)] = OpenFinding(f.domain, f.rule_id, str(f.severity))
        return list(open_.values())

    def metrics(self, wall_clock: float) -> str:
        return render(self.device_metrics(), self.open_findings(), wall_clock, __version__)
