"""The status file's text (sinks/status.py) is exactly what json.dumps
writes for the document the Cockpit page reads (docs/cockpit.md): the sink
keeps each device's window as JSON text spliced in at each write, and this
checks that text, byte for byte, against json.dumps of the same document
built here the plain way (a list of [time, rate, mode] per device, pruned
from its front by time and capped at MAX_POINTS), over many samples with
devices coming and going, posted (unobservable) devices, odd names, domains
begun again and leaving (the sink keeps the host's and the domains' JSON
between them), findings, and a wall clock that steps back."""

from __future__ import annotations

import json
import random
from collections import deque
from types import SimpleNamespace as NS

from vfio_advisor.sinks.base import DeviceSnapshot, SampleEvent
from vfio_advisor.sinks.status import MAX_POINTS, SCHEMA, StatusFileSink

WINDOW = 60.0


class PlainDocument:
    """The document as the page reads it, kept with plain lists."""

    def __init__(self, sink: StatusFileSink):
        self.sink = sink
        self.devices: dict[tuple[str, str], dict] = {}

    def sample(self, devices: list[DeviceSnapshot], now: float) -> None:
        t = round(now, 3)
        for d in devices:
            entry = self.devices.setdefault((d.domain, d.bdf), {"domain": d.domain, "bdf": d.bdf,
                                                                "points": deque(maxlen=MAX_POINTS)})
            entry.update(mode=d.mode, count=d.count, observable=bool(d.observable))
            entry["points"].append([t, round(float(d.rate), 3) if d.observable else None, d.mode])
        keys = {(d.domain, d.bdf) for d in devices}
        for key in [k for k in self.devices if k not in keys]:
            del self.devices[key]
        for entry in self.devices.values():
            while entry["points"] and entry["points"][0][0] < now - WINDOW:
                entry["points"].popleft()

    def text(self) -> str:
        s = self.sink
        devices = [{"domain": e["domain"], "bdf": e["bdf"], "mode": e["mode"], "count": e["count"],
                    "observable": e["observable"], "points": list(e["points"])}
                   for _, e in sorted(self.devices.items())]
        return json.dumps({"schema": SCHEMA, "daemon": s.daemon, "host": s.host, "domains": s.domains,
                           "findings": s.findings, "last_event": s.last_event, "devices": devices},
                          separators=(",", ":"))


def facts(name: str, rng: random.Random) -> NS:
    """What begin() reads of facts.model.DomainFacts."""
    iommu = NS(vendor="intel", units=["dmar0", "dmar1"], dma_remapping=True,
               interrupt_remapping=rng.random() < 0.5, allow_unsafe_interrupts=False,
               dma_evidence=["DMAR: IOMMU enabled"], ir_evidence=["DMAR-IR: Enabled IRQ remapping"])
    posting = NS(verdict=rng.choice(["posted", "remapped"]), vendor="intel", evidence=["cap \"PI\""])
    return NS(domain=NS(name=name, uuid=f"uuid-{name}"), host=NS(iommu=iommu, posting=posting),
              devices=[NS(address=f"0000:0{k}:00.0", guest_address=f"0000:00:0{k + rng.randrange(4)}.0")
                       for k in range(3)])


def test_the_file_is_json_dumps_of_the_document(tmp_path):
    rng = random.Random(7)
    path = tmp_path / "status.json"
    now = [1764590000.0]
    sink = StatusFileSink(str(path), "test:///default", "/", 5.0, window=WINDOW, clock=lambda: now[0])
    plain = PlainDocument(sink)
    names = ["vm0", 'vm "quoted"', "vm\\back", "ünïcode", "vm\nline"]
    devices = {(n, f"0000:0{k}:00.0") for n in names for k in range(3)}
    modes = ["intx", "msi", "msix", "none", "unknown"]
    counts = {key: 0 for key in devices}
    present = set(rng.sample(sorted(devices), 8))
    full = False
    for step in range(2 * MAX_POINTS + 40):
        # First fast (the windows fill past MAX_POINTS), then mostly forward
        # by the interval (points leave by time), sometimes a step back (the
        # wall clock was set).
        now[0] += 0.01 if step < MAX_POINTS + 20 else rng.choice([5.0, 5.0, 0.25, 0.001, 7.3333, -12.0])
        if rng.random() < 0.1:
            present ^= {rng.choice(sorted(devices))}
        if rng.random() < 0.1:
            sink.begin(facts(rng.choice(names), rng))
        if rng.random() < 0.05:
            name, bdf = rng.choice(sorted(devices))
            sink.emit(NS(domain=name, subject=bdf, rule_id=rng.choice(["R1", "R2"]), severity="warning",
                         message=f"{name} \u00e9 {bdf}"))
        snapshot = []
        for key in sorted(present):
            counts[key] += rng.choice([0, 1, 10**12, 3])
            rate = rng.choice([0.0, 1234.56789, 1e-7, 5.0, 1 / 3, 1e22])
            snapshot.append(DeviceSnapshot(key[0], key[1], rng.choice(modes), counts[key], rate,
                                           observable=rng.random() > 0.2))
        sink.event(SampleEvent(now[0], step, 5.0, lambda s=snapshot: s, list))
        plain.sample(snapshot, now[0])
        written = path.read_text()
        assert written == plain.text(), f"sample {step}"
        full = full or any(len(e["points"]) == MAX_POINTS for e in plain.devices.values())
    assert full and max(len(e["points"]) for e in json.loads(written)["devices"]) < MAX_POINTS
    assert sink.findings and sink.domains, "the document had findings and domains to check"
