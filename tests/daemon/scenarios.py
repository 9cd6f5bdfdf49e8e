"""A Watcher over a host tree (GPU and HDMI audio from real config dumps)
whose proc/interrupts a test rewrites between samples, with a fake clock.
For edge cases the lab cannot produce (cut rows, run bookkeeping); real
kernel states are in lab/captures and tested in tests/lab."""

from __future__ import annotations

from pathlib import Path

from tests.hosttree import Host, build
from tests.rules.examples import (
    AUDIO, EHCI, _gpu_audio, _ioapic_row, _ir_interrupts, _msi_row, domain_xml,
    gpu_audio_hostdevs,
)
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.daemon.state import StateStore
from vfio_advisor.daemon.watch import RuntimeConfig, Watcher
from vfio_advisor.sinks.base import CallbackSink
from vfio_advisor.sinks.metrics import MetricsFileSink
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
                 xml: str | None = None, cmdline: str | None = None, affinity: dict | None = None,
                 config=None):
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
        self.journal = []  # every journal entry, as the fields journald would get
        sink = JournalSink("daemon", sender=lambda fields: self.journal.append(dict(
            f.split("=", 1) for f in fields)))

        def emit(finding, domain):
            self.emitted.append({"rule": finding.rule_id, "subject": finding.subject,
                                 "message": finding.message})

        # The metrics file as the daemon writes it (a sink, at every sample).
        self.metrics_path = self.root.parent / f"{self.root.name}-metrics.prom"
        self.watcher = Watcher(HostRoot(self.root), config or RuntimeConfig(interval=5, settle=60),
                               [sink, CallbackSink(emit), MetricsFileSink(str(self.metrics_path))],
                               StateStore(str(state_dir) if state_dir else None),
                               clock=self.clock, pci_ids=PciIds(None), wall_clock=lambda: 1.0)
        self.domain = parse_domain_xml(xml or domain_xml("win11", gpu_audio_hostdevs()))
        self.watcher.add_domain(self.domain)

    def at(self, seconds: float, rows: dict) -> list:
        self.clock.now = 1000.0 + seconds
        (self.root / "proc/interrupts").write_text(_ir_interrupts(rows))
        return self.watcher.sample()

    def metrics(self) -> str:
        """The metrics file the last sample wrote."""
        return self.metrics_path.read_text()
