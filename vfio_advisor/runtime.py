"""Runtime advice: follow running domains' vfio vectors sample by sample.

The daemon feeds this Watcher; tests feed it directly with a fake clock and a
host tree whose proc/interrupts they rewrite between samples. It reads the
host only through HostRoot and reports through a sink, once per change of
state and never once per sample.

Why a settle time: vfio-pci starts every device on INTx and switches it to
MSI/MSI-X only when the guest driver enables it (QEMU hw/vfio/pci.c,
vfio_msi_enable / vfio_msix_enable tear INTx down), so INTx during boot is
normal. Only INTx that keeps counting after the guest had time to load its
drivers is advice-worthy.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Callable, NamedTuple

from vfio_advisor.engine import DeviceCache, DomainFacts, gather_domain, gather_host
from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.domain import Domain
from vfio_advisor.facts.host import INTERRUPTS_LIMIT, HostRoot
from vfio_advisor.facts.interrupts import LineSample, parse_vfio_handler, sample_lines
from vfio_advisor.facts.kernel import parse_cpulist
from vfio_advisor.facts.pci import PciDevice
from vfio_advisor.findings import Finding
from vfio_advisor.rules import RULES_BY_ID
from vfio_advisor.rules.remedies import msi_remedy_for


class RuntimeConfig(NamedTuple):
    interval: float = 5.0
    settle: float = 60.0  # seconds after a domain starts before INTx counts as a choice
    storm_rate: float = 20000.0  # interrupts per second on an INTx line
    storm_samples: int = 3  # consecutive samples above storm_rate
    disabled: frozenset[str] = frozenset()
    ignores: dict = {}  # domain name -> frozenset of rule IDs or slugs


class DeviceState:
    """Mutable per-device state of one domain run."""

    def __init__(self, bdf: str, device: PciDevice | None, guest_address: str | None):
        self.bdf = bdf
        self.device = device
        self.guest_address = guest_address
        self.mode = "unknown"
        self.counts: dict[str, int] = {}  # irq -> last total
        self.rate = 0.0  # interrupts/s over the last interval
        self.ever_counted = False
        self.flagged_intx = False  # VA6001 reported this run
        self.storming = 0  # consecutive samples above the storm rate
        self.storm_reported = False
        self.reported_none = False
        self.regression_checked = False
        self.affinity: dict[str, frozenset[int]] = {}  # irq -> overlap already reported


class DomainState:
    def __init__(self, facts: DomainFacts, started_at: float, run_id: object = None):
        self.facts = facts
        self.started_at = started_at
        self.run_id = run_id  # libvirt's domain ID: a new ID is a new run
        self.devices = {d.address: DeviceState(d.address, d.device, d.guest_address)
                        for d in facts.devices}

    @property
    def key(self) -> str:
        return self.facts.domain.uuid or self.facts.domain.name


class StateStore:
    """Per-device settled modes across runs (the daemon's /var/lib/vfio-advisor)."""

    def __init__(self, directory: str | None):
        self.path = os.path.join(directory, "state.json") if directory else None
        self.data: dict = {"schema": "vfio-advisor/state/1", "domains": {}}
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    loaded = json.load(f)
                if isinstance(loaded, dict) and isinstance(loaded.get("domains"), dict):
                    self.data = loaded
            except (OSError, ValueError):
                pass  # a damaged state file only costs the cross-run comparison

    def _domain(self, domain_key: str) -> dict:
        entry = self.data["domains"].get(domain_key)
        if not isinstance(entry, dict):  # a damaged file: start this domain afresh
            entry = self.data["domains"][domain_key] = {}
        return entry

    def previous(self, domain_key: str, bdf: str) -> dict:
        entry = self._domain(domain_key).get(bdf)
        return entry if isinstance(entry, dict) else {}

    def record(self, domain_key: str, bdf: str, mode: str, flagged_intx: bool) -> None:
        entry = self._domain(domain_key)
        if entry.get(bdf) == {"mode": mode, "flagged_intx": flagged_intx}:
            return
        entry[bdf] = {"mode": mode, "flagged_intx": flagged_intx}
        self.save()

    def save(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".state-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


class Watcher:
    def __init__(self, host: HostRoot, config: RuntimeConfig, emit: Callable[[Finding, Domain | None], None],
                 store: StateStore | None = None, clock: Callable[[], float] = time.monotonic,
                 pci_ids=None):
        from vfio_advisor.facts.pciids import PciIds

        self.host = host
        self.config = config
        self.emit = emit
        self.store = store or StateStore(None)
        self.clock = clock
        self.domains: dict[str, DomainState] = {}
        self.pci_ids = pci_ids if pci_ids is not None else PciIds.load(host, HostRoot("/"))
        self.last_sample: float | None = None
        self.odd_reported = False
        self.kernel = None
        self.wanted: frozenset[str] = frozenset()  # INTx lines of watched devices
        self._storm_lines: set[str] = set()  # one storm report per host line per sample

    # --- domains --------------------------------------------------------

    def add_domain(self, domain: Domain, started_at: float | None = None,
                   run_id: object = None, same_run: bool = False) -> DomainState:
        """Follow a running domain. `same_run`: new XML of a run we already
        follow (a device was added or removed), whose state is kept; a
        different `run_id` always starts afresh."""
        host_facts = gather_host(self.host)
        self.kernel = host_facts.kernel
        facts = gather_domain(domain, host_facts, DeviceCache(self.host, self.pci_ids))
        old = self.domains.get(domain.name)
        if old is not None and not (same_run and (run_id is None or run_id == old.run_id)):
            old = None  # a new run: settle time, flags and counters start over
        if old is not None:
            started_at = old.started_at
        state = DomainState(facts, self.clock() if started_at is None else started_at, run_id)
        if old is not None:
            for bdf, dev in state.devices.items():
                if bdf in old.devices:
                    prev = old.devices[bdf]
                    prev.device, prev.guest_address = dev.device, dev.guest_address
                    state.devices[bdf] = prev
        self.domains[domain.name] = state
        self._update_wanted()
        return state

    def remove_domain(self, name: str) -> None:
        self.domains.pop(name, None)
        self._update_wanted()

    @property
    def device_count(self) -> int:
        return sum(len(d.devices) for d in self.domains.values())

    # --- sampling -------------------------------------------------------

    def _update_wanted(self) -> None:
        self.wanted = frozenset(str(dev.device.irq) for dom in self.domains.values()
                                for dev in dom.devices.values()
                                if dev.device is not None and dev.device.irq)

    def sample(self) -> list[Finding]:
        """Read /proc/interrupts once and update every watched device."""
        now = self.clock()
        if not self.domains:
            self.last_sample = now
            return []
        try:
            data = self.host.read_bytes("proc/interrupts", INTERRUPTS_LIMIT)
        except FactUnavailable:
            return []
        rows, odd = sample_lines(data, self.wanted)
        findings: list[Finding] = []
        if odd and not self.odd_reported:
            self.odd_reported = True
            findings.append(Finding("VA8003", None, None,
                                    f"{odd} /proc/interrupts rows could not be read and are "
                                    "skipped (reported once).", RULES_BY_ID["VA8003"].remedy))
        by_bdf: dict[str, list[tuple[LineSample, str]]] = {}
        for row in rows.values():
            for handler in row.handlers:
                v = parse_vfio_handler(handler)
                if v is not None:
                    by_bdf.setdefault(v.bdf, []).append((row, v.mode))
        dt = (now - self.last_sample) if self.last_sample is not None else None
        self._storm_lines.clear()
        for dom in list(self.domains.values()):
            for dev in dom.devices.values():
                findings += self._update(dom, dev, by_bdf.get(dev.bdf, []), dt, now)
        self.last_sample = now
        for f in findings:
            domain = self.domains[f.domain].facts.domain if f.domain in self.domains else None
            self.emit(f, domain)
        return findings

    def _ignored(self, dom: DomainState, rule_id: str) -> bool:
        return RULES_BY_ID[rule_id].named_in(
            self.config.disabled | self.config.ignores.get(dom.facts.domain.name, frozenset())
            | dom.facts.domain.ignored_rules)

    def _finding(self, dom: DomainState, dev: DeviceState, rule_id: str, message: str,
                 remedy: str | None = None, evidence: dict | None = None) -> list[Finding]:
        if self._ignored(dom, rule_id):
            return []
        return [Finding(rule_id, dom.facts.domain.name, dev.bdf, message,
                        remedy or RULES_BY_ID[rule_id].remedy, dev.guest_address,
                        tuple((evidence or {}).items()))]

    def _update(self, dom: DomainState, dev: DeviceState, vectors: list[tuple[LineSample, str]],
                dt: float | None, now: float) -> list[Finding]:
        out: list[Finding] = []
        modes = {m for _, m in vectors}
        mode = "msix" if "msix" in modes else "msi" if "msi" in modes else "intx" if modes else "none"
        counts = {row.irq: row.total for row, _ in vectors}
        previous_mode = dev.mode
        if mode == previous_mode and dt and dt > 0:
            delta = sum(max(counts[i] - dev.counts.get(i, counts[i]), 0) for i in counts)
            dev.rate = delta / dt
        else:
            delta, dev.rate = 0, 0.0
        # An INTx line's count is cumulative since host boot and may include
        # other handlers' interrupts, so a non-zero line does not prove this
        # device ever interrupted; but "none at all" (VA6006, info) must not be
        # said of a device that may have: only an all-zero count is taken as none.
        if delta > 0 or any(counts.values()):
            dev.ever_counted = True
        dev.mode, dev.counts = mode, counts
        settled = now - dom.started_at >= self.config.settle
        name = dev.device.name if dev.device else dev.bdf
        intx_row = next((row for row, m in vectors if m == "intx"), None)
        sharers = tuple(h for h in intx_row.handlers if h != f"vfio-intx({dev.bdf})") if intx_row else ()
        msi_capable = dev.device is not None and dev.device.supports_msi is True

        # INTx -> MSI after we had flagged it: the fix worked.
        if previous_mode == "intx" and mode in ("msi", "msix"):
            prev = self.store.previous(dom.key, dev.bdf)
            if dev.flagged_intx or prev.get("flagged_intx"):
                out += self._finding(dom, dev, "VA6002",
                                     f"{name} switched from INTx to {mode.upper()}: the guest driver "
                                     "now uses message-signalled interrupts.",
                                     evidence={"mode": f"intx -> {mode}"})
            dev.flagged_intx = False
        if not settled:
            return out
        if mode == "intx" and msi_capable and delta > 0 and not dev.flagged_intx:
            dev.flagged_intx = True
            assigned = next(a for a in dom.facts.devices if a.address == dev.bdf)
            siblings = [(s.device, dom.devices[s.address].mode == "intx")
                        for s in dom.facts.siblings(assigned) if s.device is not None]
            # /proc/interrupts counts per line, not per handler.
            shared = (f" (shared with {', '.join(sharers)}, so part of that may be theirs)"
                      if sharers else "")
            out += self._finding(dom, dev, "VA6001",
                                 f"{name} supports MSI but is still on INTx {self.config.settle:g} s after "
                                 f"the domain started: host IRQ {intx_row.irq} counts "
                                 f"{dev.rate:.0f}/s{shared}.",
                                 msi_remedy_for(dom.facts.domain.guest_os, dev.device, siblings),
                                 {"rate": f"{dev.rate:.1f}", "irq": intx_row.irq})
        if not dev.regression_checked and mode != "none":
            dev.regression_checked = True
            prev = self.store.previous(dom.key, dev.bdf)
            if mode == "intx" and prev.get("mode") in ("msi", "msix") and msi_capable:
                out += self._finding(dom, dev, "VA6003",
                                     f"{name} used {prev['mode'].upper()} in the previous run of this "
                                     "domain and is on INTx now. A guest driver update may have reset "
                                     "MSISupported (Windows) or the driver's MSI option.",
                                     msi_remedy_for(dom.facts.domain.guest_os, dev.device, []),
                                     {"previous mode": prev["mode"], "mode": mode})
        if mode == "intx" and dev.rate >= self.config.storm_rate:
            dev.storming += 1
            if dev.storming >= self.config.storm_samples and not dev.storm_reported:
                dev.storm_reported = True
                if intx_row.irq not in self._storm_lines:
                    # /proc/interrupts counts the line: with several handlers on it
                    # we cannot say whose interrupts these are, so say it once.
                    self._storm_lines.add(intx_row.irq)
                    rule = "VA6005" if sharers else "VA6004"
                    where = (f"shared with {', '.join(sharers)}, any of which may raise them"
                             if sharers else "not shared")
                    out += self._finding(dom, dev, rule,
                                         f"Interrupt storm: host IRQ {intx_row.irq} of {name} counts "
                                         f"{dev.rate:.0f} INTx/s ({where}) for {dev.storming} samples "
                                         "in a row.",
                                         evidence={"rate": f"{dev.rate:.0f}", "irq": intx_row.irq,
                                                   "threshold": f"{self.config.storm_rate:g}"})
        elif dev.rate < self.config.storm_rate / 2:
            dev.storming, dev.storm_reported = 0, False
        if not dev.ever_counted and not dev.reported_none:
            dev.reported_none = True
            out += self._finding(dom, dev, "VA6006",
                                 f"{name} has raised no interrupt at all {self.config.settle:g} s after "
                                 "the domain started" + (" (no vfio vectors are set up)"
                                                         if mode == "none" else "") + ".")
        elif dev.ever_counted:
            dev.reported_none = False
        out += self._affinity(dom, dev, vectors, name)
        if mode != "none":
            self.store.record(dom.key, dev.bdf, mode, dev.flagged_intx)
        return out

    def _affinity(self, dom: DomainState, dev: DeviceState, vectors, name: str) -> list[Finding]:
        out: list[Finding] = []
        pinned = dom.facts.domain.pinned_cpus
        isolated = frozenset()
        if self.kernel is not None and self.kernel.cmdline is not None:
            isolated = self.kernel.cmdline.isolcpus | self.kernel.cmdline.nohz_full
        if not pinned and not isolated:
            return out
        for row, _ in vectors:
            try:
                cpus = parse_cpulist(self.host.read_value(f"proc/irq/{row.irq}/smp_affinity_list"))
            except FactUnavailable:
                continue
            overlap = cpus & (pinned | isolated)
            if overlap == dev.affinity.get(row.irq, frozenset()):
                continue
            dev.affinity[row.irq] = overlap
            if not overlap:
                continue
            what = []
            if cpus & pinned:
                what.append(f"the domain's pinned vCPU CPUs {_cpulist(cpus & pinned)}")
            if cpus & isolated:
                what.append(f"isolated CPUs {_cpulist(cpus & isolated)} (isolcpus/nohz_full)")
            housekeeping = "the host's housekeeping CPUs"
            out += self._finding(
                dom, dev, "VA6007",
                f"Host IRQ {row.irq} of {name} may run on {' and '.join(what)} "
                f"(smp_affinity_list {_cpulist(cpus)}): its handler then preempts those CPUs.",
                f"Point it at {housekeeping}: echo <cpus> > /proc/irq/{row.irq}/smp_affinity_list "
                "(irqbalance may undo that; see its --banirq), or set irqaffinity= on the host "
                "kernel command line. vfio-advisor only advises; it never changes affinity.",
                {"irq": row.irq, "smp_affinity_list": _cpulist(cpus)})
        return out

    # --- metrics --------------------------------------------------------

    def metrics_text(self) -> str:
        lines = [
            "# HELP vfio_advisor_device_interrupts_per_second Interrupt rate of an assigned device's vfio vectors.",
            "# TYPE vfio_advisor_device_interrupts_per_second gauge",
        ]
        mode_lines = [
            "# HELP vfio_advisor_device_mode Interrupt mode of an assigned device (1 for the current mode).",
            "# TYPE vfio_advisor_device_mode gauge",
        ]
        for dom in sorted(self.domains.values(), key=lambda d: d.facts.domain.name):
            for dev in sorted(dom.devices.values(), key=lambda d: d.bdf):
                labels = f'domain="{_label(dom.facts.domain.name)}",host_bdf="{dev.bdf}"'
                lines.append(f"vfio_advisor_device_interrupts_per_second{{{labels}}} {dev.rate:.3f}")
                for mode in ("intx", "msi", "msix", "none"):
                    mode_lines.append(f'vfio_advisor_device_mode{{{labels},mode="{mode}"}} '
                                      f'{1 if dev.mode == mode else 0}')
        return "\n".join(lines + mode_lines) + "\n"

    def write_metrics(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".vfio-advisor-")
        with os.fdopen(fd, "w") as f:
            f.write(self.metrics_text())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # node_exporter must never read half a file


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _cpulist(cpus) -> str:
    cpus = sorted(cpus)
    out, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)
