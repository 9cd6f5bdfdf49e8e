"""Gatherers: read the host once and build the fact model (facts/model.py)."""

from __future__ import annotations

import time
from typing import Callable

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.domain import Domain
from vfio_advisor.facts.guest_intx import build_guest_intx_map
from vfio_advisor.facts.host import INTERRUPTS_LIMIT, HostRoot
from vfio_advisor.facts.interrupts import Interrupts, parse_interrupts
from vfio_advisor.facts.iommu import read_vfio_facts
from vfio_advisor.facts.kernel import read_kernel_facts
from vfio_advisor.facts.model import (
    AssignedDevice, DomainFacts, HostFacts, OtherDomainDevice, device_interrupts, host_pins,
)
from vfio_advisor.facts.pci import PciDevice, read_pci_device
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.facts.platform import iommu_state, ir_chips, posting, read_iommu_units


def read_interrupts(host: HostRoot) -> Interrupts:
    return parse_interrupts(host.read_text("proc/interrupts", INTERRUPTS_LIMIT))


def no_rows(table: Interrupts) -> str | None:
    """Why a table read from /proc/interrupts is no table at all, or None.
    The kernel prints the CPU header, a row per IRQ with a handler, and then
    the architecture's own rows (kernel/irq/proc.c show_interrupts calls
    arch_show_interrupts: x86's NMI, LOC, ..., ERR, arm64's IPIn): a host
    with no row at all had the file emptied or replaced."""
    if table.lines:
        return None
    if table.skipped:
        return f"no interrupt rows: {len(table.skipped)} lines not understood ({table.skipped[0]})"
    return "empty: no rows"


def gather_host(host: HostRoot, sample_seconds: float | None = None,
                progress: Callable[[float], None] | None = None) -> HostFacts:
    kernel = read_kernel_facts(host)
    interrupts = later = None
    problem = sample_problem = None
    damaged = False
    try:
        interrupts = read_interrupts(host)
    except FactUnavailable as exc:
        problem = f"{exc.path}: {exc.reason}"
    else:
        if (why := no_rows(interrupts)) is not None:
            # The rules see it as an unreadable file: no table, a problem.
            interrupts, problem, damaged = None, f"proc/interrupts: {why}", True
    if interrupts is not None and sample_seconds:
        _sleep(sample_seconds, progress)
        try:
            later = read_interrupts(host)
        except FactUnavailable as exc:
            sample_problem = f"{exc.path}: {exc.reason}"
        else:
            if (why := no_rows(later)) is not None:
                later, sample_problem = None, f"proc/interrupts: {why}"
    # Both read the kernel's own state (sysfs, module parameters as loaded)
    # and reuse the command line read above, one scan of the interrupt chips
    # (ir_chips: about 0.9 ms at 20,000 rows, once instead of twice) and one
    # read of the IOMMU units (/sys/class/iommu).
    # No rule, report or sink reads the DMA-remapping evidence, so the Intel
    # build default is not looked up: that scans /boot/config-<release>
    # (~300 KB on Debian 12, ~3 ms) at every hook run and domain add, for a
    # line nobody shows.
    chips, units = ir_chips(interrupts), read_iommu_units(host)
    return HostFacts(kernel=kernel, interrupts=interrupts, interrupts_problem=problem,
                     interrupts_damaged=damaged, sample_problem=sample_problem,
                     later=later, sample_seconds=sample_seconds if later else None,
                     posting=posting(host, cmdline=kernel.cmdline, chips=chips, units=units),
                     iommu=iommu_state(host, cmdline=kernel.cmdline, build_default=False,
                                       chips=chips, units=units, unsafe=kernel.allow_unsafe_param))


def _sleep(seconds: float, progress: Callable[[float], None] | None) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if progress:
            progress(1.0 - left / seconds)
        time.sleep(min(left, 0.25))
    if progress:
        progress(1.0)


class DeviceCache:
    """Reads each host device once, however many domains assign it."""

    def __init__(self, host: HostRoot, pci_ids: PciIds):
        self.host = host
        self.pci_ids = pci_ids
        self._cache: dict[str, tuple[PciDevice | None, str | None]] = {}
        # id(domain) -> (domain, host facts, its assigned devices): every
        # gather_domain of a session builds every other defined domain's
        # devices for the cross-domain check, which made `advise` over D
        # domains build D x D of them (bench/scale_bench.py, advise_scale).
        # The domain and host are held, so `is` cannot match a new object
        # at a freed one's address.
        self._assigned: dict[int, tuple] = {}

    def assigned(self, domain: Domain, host: HostFacts) -> tuple[AssignedDevice, ...]:
        entry = self._assigned.get(id(domain))
        if entry is None or entry[0] is not domain or entry[1] is not host:
            entry = self._assigned[id(domain)] = (domain, host, assigned_devices(domain, host, self))
        return entry[2]

    def get(self, bdf: str) -> tuple[PciDevice | None, str | None]:
        if bdf not in self._cache:
            try:
                self._cache[bdf] = (read_pci_device(self.host, bdf, self.pci_ids), None)
            except FactUnavailable as exc:
                self._cache[bdf] = (None, exc.reason)
        return self._cache[bdf]


def assigned_devices(domain: Domain, host: HostFacts, devices: DeviceCache) -> tuple[AssignedDevice, ...]:
    assigned = []
    for hd in domain.hostdevs:
        bdf = str(hd.source)
        device, problem = devices.get(bdf)
        assigned.append(AssignedDevice(hostdev=hd, address=bdf, device=device, problem=problem,
                                       interrupts=device_interrupts(bdf, device, host.interrupts,
                                                                    host.later)))
    return tuple(assigned)


def gather_domain(domain: Domain, host: HostFacts, devices: DeviceCache,
                  others: tuple[Domain, ...] = ()) -> DomainFacts:
    """The domain's facts; `others`: the other defined domains, whose devices
    the cross-domain line check (VA2005) compares with this one's."""
    assigned = assigned_devices(domain, host, devices)
    other = tuple(OtherDomainDevice(o.name, d) for o in others if o.name != domain.name
                  for d in devices.assigned(o, host))
    pins = host_pins(assigned, host.kernel.nointxmask)
    vfio = read_vfio_facts(devices.host, ((d.address, d.device.iommu_group, d.device.iommu_group_members)
                                          for d in assigned if d.device is not None),
                           host.kernel.iommu_groups) if assigned else None
    return DomainFacts(domain=domain, host=host, devices=assigned,
                       guest_intx=build_guest_intx_map(domain, pins), others=other, vfio=vfio)
