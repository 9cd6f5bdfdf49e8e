"""Gather facts once, run every rule, return findings.

The hook, the daemon and the CLI all call `analyse_domain`; none of them
reads a file or applies a rule by itself.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, NamedTuple

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.domain import Domain, Hostdev
from vfio_advisor.facts.guest_intx import GuestIntxMap, build_guest_intx_map
from vfio_advisor.facts.host import INTERRUPTS_LIMIT, HostRoot
from vfio_advisor.facts.interrupts import Interrupts, IrqLine, parse_interrupts
from vfio_advisor.facts.kernel import KernelFacts, read_kernel_facts
from vfio_advisor.facts.pci import IntxMasking, PciDevice, read_pci_device
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.findings import Finding


class HostInterrupts(NamedTuple):
    """How one assigned device signals interrupts on the host right now."""

    mode: str  # "intx" | "msi" | "msix" | "none" | "unknown"
    irqs: tuple[int, ...]
    intx_irq: int | None  # the device's INTx line on the host
    shared_with: tuple[str, ...]  # other handlers on that line
    intx_count: int | None  # vfio-intx count, when on INTx
    intx_delta: int | None  # its increase over the sample, when sampled

    @property
    def on_intx(self) -> bool:
        return self.mode == "intx"


class HostFacts(NamedTuple):
    kernel: KernelFacts
    interrupts: Interrupts | None
    interrupts_problem: str | None
    later: Interrupts | None  # second read, with --sample
    sample_seconds: float | None

    @property
    def interrupt_remapping(self) -> bool | None:
        return self.kernel.interrupt_remapping(self.interrupts)


class AssignedDevice(NamedTuple):
    hostdev: Hostdev
    address: str  # host BDF
    device: PciDevice | None  # None when the host has no such device
    problem: str | None  # why host facts are missing
    interrupts: HostInterrupts

    @property
    def guest_address(self) -> str | None:
        return str(self.hostdev.guest.address) if self.hostdev.guest else None

    def intx_masking(self, nointxmask: bool = False) -> IntxMasking | None:
        """The device's own evidence, overruled by what vfio-pci did: it
        requests a shared line only for devices that passed its PCI 2.3
        masking probe (vfio_pci_intrs.c: IRQF_SHARED only if pci_2_3)."""
        if self.device is None:
            return None
        own = self.device.intx_masking(nointxmask)
        if own.supported is None and self.interrupts.on_intx and self.interrupts.shared_with:
            return IntxMasking(True, f"vfio-pci shares host IRQ {self.interrupts.intx_irq} with "
                                     "other handlers, which it does only for PCI 2.3 devices")
        return own


class DomainFacts(NamedTuple):
    domain: Domain
    host: HostFacts
    devices: tuple[AssignedDevice, ...]
    guest_intx: GuestIntxMap

    def siblings(self, dev: AssignedDevice) -> tuple[AssignedDevice, ...]:
        """Other functions of the same physical host device assigned to this domain."""
        slot = dev.address.rsplit(".", 1)[0]
        return tuple(d for d in self.devices
                     if d is not dev and d.address.rsplit(".", 1)[0] == slot)


def read_interrupts(host: HostRoot) -> Interrupts:
    return parse_interrupts(host.read_text("proc/interrupts", INTERRUPTS_LIMIT))


def gather_host(host: HostRoot, sample_seconds: float | None = None,
                progress: Callable[[float], None] | None = None) -> HostFacts:
    kernel = read_kernel_facts(host)
    interrupts = later = None
    problem = None
    try:
        interrupts = read_interrupts(host)
    except FactUnavailable as exc:
        problem = f"{exc.path}: {exc.reason}"
    if interrupts is not None and sample_seconds:
        _sleep(sample_seconds, progress)
        try:
            later = read_interrupts(host)
        except FactUnavailable as exc:
            problem = f"{exc.path}: {exc.reason} (second sample)"
    return HostFacts(kernel=kernel, interrupts=interrupts, interrupts_problem=problem,
                     later=later, sample_seconds=sample_seconds if later else None)


def _sleep(seconds: float, progress: Callable[[float], None] | None) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if progress:
            progress(1.0 - left / seconds)
        time.sleep(min(left, 0.25))
    if progress:
        progress(1.0)


def host_interrupts(bdf: str, device: PciDevice | None, host: HostFacts) -> HostInterrupts:
    table = host.interrupts
    if table is None:
        return HostInterrupts("unknown", (), None, (), None, None)
    vfio = table.vfio_lines(bdf)
    modes = {v.mode for _, v in vfio}
    irqs = tuple(sorted({line.number for line, _ in vfio if line.number is not None}))
    intx_line: IrqLine | None = next((line for line, v in vfio if v.mode == "intx"), None)
    if "msix" in modes:
        mode = "msix"
    elif "msi" in modes:
        mode = "msi"
    elif intx_line is not None:
        mode = "intx"
    elif device is not None and device.msi_irqs:
        # A host driver (not vfio-pci) owns MSI vectors.
        mode, irqs = "msi", device.msi_irqs
    else:
        mode = "none"
    if intx_line is None and device is not None and device.irq:
        candidate = table.by_irq().get(str(device.irq))
        # While MSI is on, older kernels put the first MSI vector in sysfs `irq`.
        if candidate is not None and not (candidate.chip and "MSI" in candidate.chip):
            intx_line = candidate
    shared = tuple(h for h in intx_line.handlers if not _own_handler(h, bdf, device)) if intx_line else ()
    count = delta = None
    if mode == "intx" and intx_line is not None:
        count = intx_line.total
        if host.later is not None:
            after = host.later.by_irq().get(intx_line.irq)
            if after is not None and any(v.bdf == bdf and v.mode == "intx" for v in after.vfio):
                delta = max(after.total - count, 0)
            else:
                delta = 0  # the handler went away: no longer on INTx
    return HostInterrupts(mode=mode, irqs=irqs,
                          intx_irq=intx_line.number if intx_line else None,
                          shared_with=shared, intx_count=count, intx_delta=delta)


def _own_handler(handler: str, bdf: str, device: PciDevice | None) -> bool:
    """Is this /proc/interrupts action the device's own?

    Its vfio-intx, or its host driver's handler: with managed='yes' libvirt
    unbinds that driver before QEMU opens the device, which frees the line.
    Drivers name actions after themselves ("snd_hda_intel:card0") or the BDF.
    """
    if handler == f"vfio-intx({bdf})" or bdf in handler:
        return True
    driver = device.driver if device is not None else None
    if not driver or driver == "vfio-pci":
        return False
    norm = handler.replace("-", "_")
    drv = driver.replace("-", "_")
    return norm == drv or norm.startswith(drv + ":")


class DeviceCache:
    """Reads each host device once, however many domains assign it."""

    def __init__(self, host: HostRoot, pci_ids: PciIds):
        self.host = host
        self.pci_ids = pci_ids
        self._cache: dict[str, tuple[PciDevice | None, str | None]] = {}

    def get(self, bdf: str) -> tuple[PciDevice | None, str | None]:
        if bdf not in self._cache:
            try:
                self._cache[bdf] = (read_pci_device(self.host, bdf, self.pci_ids), None)
            except FactUnavailable as exc:
                self._cache[bdf] = (None, exc.reason)
        return self._cache[bdf]


def gather_domain(domain: Domain, host: HostFacts, devices: DeviceCache) -> DomainFacts:
    assigned = []
    for hd in domain.hostdevs:
        bdf = str(hd.source)
        device, problem = devices.get(bdf)
        assigned.append(AssignedDevice(hostdev=hd, address=bdf, device=device, problem=problem,
                                       interrupts=host_interrupts(bdf, device, host)))
    pins = {d.address: (d.device.guest_pin if d.device else None) for d in assigned}
    return DomainFacts(domain=domain, host=host, devices=tuple(assigned),
                       guest_intx=build_guest_intx_map(domain, pins))


def run_rules(facts: DomainFacts, rules: Iterable | None = None,
              disabled: frozenset[str] = frozenset()) -> list[Finding]:
    from vfio_advisor.rules import RULES, internal_error

    findings: list[Finding] = []
    disabled = disabled | facts.domain.ignored_rules
    for rule in rules if rules is not None else RULES:
        if rule.check is None or rule.named_in(disabled):
            continue
        try:
            findings.extend(rule.check(facts))
        except Exception as exc:  # noqa: BLE001 - one broken rule must not hide the others
            findings.append(internal_error(facts.domain.name, f"{rule.id} failed: {exc!r}"))
    findings.sort(key=Finding.sort_key)
    return findings


def analyse_domain(domain: Domain, host: HostFacts, devices: DeviceCache) -> tuple[DomainFacts, list[Finding]]:
    facts = gather_domain(domain, host, devices)
    return facts, run_rules(facts)
