"""The status file's text (sinks/status.py) is exactly what json.dumps
writes for the document the Cockpit page reads (docs/cockpit.md): the sink
keeps the times and each device's rates as JSON text, and its mode runs'
JSON, spliced in at each write, and this checks that text, byte for byte,
against json.dumps of the same document built here the plain way (every
sample's time, and each device's [time, rate, mode] points, pruned from
their front by time and capped at MAX_POINTS, the mode runs read off the
device's whole history), over many samples with devices coming, going and
given twice in a sample, posted (unobservable) devices, odd names, domains
begun again and leaving (the sink keeps the host's and the domains' JSON
between them), findings, and a wall clock that steps back. device_points()
must give the plain points back."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace as NS

from vfio_advisor.sinks.base import DeviceSnapshot, SampleEvent
from vfio_advisor.sinks.status import MAX_POINTS, SCHEMA, StatusFileSink, device_points

WINDOW = 60.0


class PlainDocument:
    """The document as the page reads it, kept with plain lists."""

    def __init__(self, sink: StatusFileSink):
        self.sink = sink
        self.times: list[float] = []  # every sample's time; a sample's number is its index here
        self.kept_times = 0  # how many of the last are in the document
        self.devices: dict[tuple[str, str], dict] = {}

    def sample(self, devices: list[DeviceSnapshot], now: float) -> None:
        t = round(now, 3)
        self.times.append(t)
        number = len(self.times) - 1
        seen = set()
        for d in devices:
            key = (d.domain, d.bdf)
            if key in seen:
                continue  # given twice in a sample: the first counts
            seen.add(key)
            entry = self.devices.setdefault(key, {"domain": d.domain, "bdf": d.bdf, "history": [], "kept": 0})
            entry.update(mode=d.mode, count=d.count, observable=bool(d.observable))
            entry["history"].append((number, t, round(float(d.rate), 3) if d.observable else None, d.mode))
            entry["kept"] = min(entry["kept"] + 1, MAX_POINTS)
        for key in [k for k in self.devices if k not in seen]:
            del self.devices[key]
        for entry in self.devices.values():
            while entry["kept"] and entry["history"][-entry["kept"]][1] < now - WINDOW:
                entry["kept"] -= 1
        self.kept_times = min(self.kept_times + 1, MAX_POINTS)
        while self.kept_times and self.times[-self.kept_times] < now - WINDOW:
            self.kept_times -= 1

    @staticmethod
    def points(entry: dict) -> list[list]:
        return [[t, rate, mode] for _, t, rate, mode in entry["history"][-entry["kept"]:]]

    @staticmethod
    def modes(entry: dict) -> list[list]:
        """The runs of equal modes over the device's whole history, less
        those that ended before its first kept point."""
        history = entry["history"]
        runs = [(number, t, mode) for i, (number, t, _, mode) in enumerate(history)
                if i == 0 or mode != history[i - 1][3]]
        first = history[-entry["kept"]][0]
        return [[t, mode] for i, (_, t, mode) in enumerate(runs) if i + 1 == len(runs) or runs[i + 1][0] > first]

    def text(self) -> str:
        s = self.sink
        devices = [{"domain": e["domain"], "bdf": e["bdf"], "mode": e["mode"], "count": e["count"],
                    "observable": e["observable"], "rates": [rate for _, rate, _ in self.points(e)],
                    "modes": self.modes(e)}
                   for _, e in sorted(self.devices.items())]
        return json.dumps({"schema": SCHEMA, "daemon": s.daemon, "host": s.host, "domains": s.domains,
                           "findings": s.findings, "last_event": s.last_event,
                           "times": self.times[len(self.times) - self.kept_times:], "devices": devices},
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
    mode: dict[tuple[str, str], str] = {}
    full, runs, decoded = False, 0, 0
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
            # Mostly the mode it had (runs of a few samples), sometimes another.
            mode[key] = rng.choice(modes) if rng.random() < 0.3 else mode.get(key, "unknown")
            snapshot.append(DeviceSnapshot(key[0], key[1], mode[key], counts[key], rate,
                                           observable=rng.random() > 0.2))
        if snapshot and rng.random() < 0.1:  # a device given twice, differently
            again = rng.choice(snapshot)
            snapshot.insert(rng.randrange(len(snapshot) + 1),
                            again._replace(mode=rng.choice(modes), rate=7.0, count=again.count + 1))
        sink.event(SampleEvent(now[0], step, 5.0, lambda s=snapshot: s, list))
        plain.sample(snapshot, now[0])
        written = path.read_text()
        assert written == plain.text(), f"sample {step}"
        doc = json.loads(written)
        for dev in doc["devices"]:
            window = doc["times"][len(doc["times"]) - len(dev["rates"]):]
            if len(set(window)) == len(window):  # device_points finds a run by its time
                assert device_points(doc, dev) == plain.points(plain.devices[dev["domain"], dev["bdf"]])
                decoded += 1
        full = full or any(e["kept"] == MAX_POINTS for e in plain.devices.values())
        runs = max(runs, max((len(d["modes"]) for d in doc["devices"]), default=0))
    assert full and max(len(d["rates"]) for d in doc["devices"]) < MAX_POINTS
    assert runs > 3 and decoded > 1000
    assert sink.findings and sink.domains, "the document had findings and domains to check"
