"""Runtime scenarios: a recorded host tree whose proc/interrupts advances
between samples, a fake clock, and the real Watcher logging through the
journald sink. Run as `python -m tests.daemon.scenarios NAME WORKDIR` inside
a private journald (tests/support/private-journal.sh); prints one JSON line
per finding it emitted, for the test to compare with the journal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.hosttree import build, edit_interrupts
from tests.rules.examples import (
    AUDIO, EHCI, GPU, _gpu_audio, _ioapic_row, _ir_interrupts, _msi_row, domain_xml,
    gpu_audio_hostdevs,
)
from tests.hosttree import Host
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.runtime import RuntimeConfig, StateStore, Watcher
from vfio_advisor.sinks.journal import JournalSink

CPUS = 8


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def intx_rows(audio_count: int, shared: bool = False) -> dict:
    handlers = [EHCI, f"vfio-intx({AUDIO})"] if shared else [f"vfio-intx({AUDIO})"]
    irq = 16 if shared else 28
    return {irq: _ioapic_row(irq, [audio_count] + [0] * (CPUS - 1), handlers)}


def msi_rows(audio_count: int) -> dict:
    return {28: None, 51: _msi_row(51, [0, 0, 0, audio_count, 0, 0, 0, 0], f"vfio-msi[0]({AUDIO})")}


class Scenario:
    def __init__(self, work: Path, shared: bool = False, state_dir: Path | None = None,
                 xml: str | None = None, cmdline: str | None = None, affinity: dict | None = None):
        self.root = work / "host"
        audio_irq = 16 if shared else 28
        extra = {} if cmdline is None else {"cmdline": cmdline}
        self.host = Host(devices=_gpu_audio(gpu_irq=45, audio_irq=audio_irq, gpu_msi=(45,)),
                         interrupts=_ir_interrupts(intx_rows(0, shared)), **extra)
        build(self.root, self.host)
        for irq, cpus in (affinity or {}).items():
            d = self.root / "proc/irq" / str(irq)
            d.mkdir(parents=True, exist_ok=True)
            (d / "smp_affinity_list").write_text(cpus + "\n")
        self.clock = Clock()
        self.emitted = []
        sink = JournalSink("daemon")

        def emit(finding, domain):
            sink.emit(finding, domain)
            self.emitted.append({"rule": finding.rule_id, "subject": finding.subject,
                                 "message": finding.message})

        self.watcher = Watcher(HostRoot(self.root), RuntimeConfig(interval=5, settle=60),
                               emit, StateStore(str(state_dir) if state_dir else None),
                               clock=self.clock, pci_ids=PciIds(None))
        self.domain = parse_domain_xml(xml or domain_xml("win11", gpu_audio_hostdevs()))
        self.watcher.add_domain(self.domain)

    def at(self, seconds: float, rows: dict) -> list:
        self.clock.now = 1000.0 + seconds
        (self.root / "proc/interrupts").write_text(_ir_interrupts(rows))
        return self.watcher.sample()


def stays_on_intx(work: Path) -> list:
    """Audio on INTx through boot (normal), still counting after the settle
    time (advice, once), then switched to MSI (the fix worked, once)."""
    s = Scenario(work, state_dir=work / "state")
    count = 0
    for t in range(0, 100, 5):  # boot and 40 s past the settle time
        count += 3000
        s.at(t, intx_rows(count))
    for t in range(100, 130, 5):
        s.at(t, msi_rows(500 * (t - 95)))
    return [s]


def storm_on_shared_line(work: Path) -> list:
    """Audio on vfio-intx shares IRQ 16 with EHCI and storms at 60,000/s."""
    s = Scenario(work, shared=True)
    count = 0
    for t in range(0, 120, 5):
        count += 300000 if t >= 60 else 1000
        s.at(t, intx_rows(count, shared=True))
    return [s]


def regression(work: Path) -> list:
    """Run 1 settles on MSI; run 2 (after a 'driver update') stays on INTx."""
    state = work / "state"
    first = Scenario(work / "run1", state_dir=state)
    for t in range(0, 90, 5):
        first.at(t, msi_rows(1000 * (t + 1)))
    second = Scenario(work / "run2", state_dir=state)
    count = 0
    for t in range(0, 90, 5):
        count += 2000
        second.at(t, intx_rows(count))
    return [first, second]


def no_interrupts(work: Path) -> list:
    """The audio function never gets a vfio vector (no guest driver)."""
    s = Scenario(work)
    for t in range(0, 90, 5):
        s.at(t, {28: None})
    return [s]


def affinity(work: Path) -> list:
    """vCPUs pinned to host CPUs 2-3; the GPU's vector may run on 0-7."""
    xml = domain_xml("win11", gpu_audio_hostdevs()).replace(
        "<vcpu placement='static'>4</vcpu>",
        "<vcpu placement='static'>2</vcpu><cputune><vcpupin vcpu='0' cpuset='2'/>"
        "<vcpupin vcpu='1' cpuset='3'/></cputune>")
    s = Scenario(work, xml=xml, affinity={45: "0-7", 51: "0-1"})
    for t in range(0, 90, 5):
        s.at(t, msi_rows(1000 * (t + 1)))
    return [s]


SCENARIOS = {f.__name__: f for f in (stays_on_intx, storm_on_shared_line, regression,
                                     no_interrupts, affinity)}


if __name__ == "__main__":
    name, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    for scenario in SCENARIOS[name](work):
        for e in scenario.emitted:
            print(json.dumps(e))
