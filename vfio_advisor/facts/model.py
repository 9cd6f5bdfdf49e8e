"""The fact model: what the gatherers produce and the rules read.

Host, device, interrupt and domain facts live here so that rules import
facts and nothing above them. `device_interrupts` is the one interrupt model:
`advise` applies it to the whole /proc/interrupts table, the daemon to the
rows its sampler read (facts/sampler.py: /sys/kernel/irq/N per sample,
`facts.interrupts.sample_table` of /proc/interrupts at a rediscovery), with
the same mode, sharer and delta rules.
"""

from __future__ import annotations

from typing import NamedTuple

from vfio_advisor.facts.domain import Domain, Hostdev
from vfio_advisor.facts.guest_intx import GuestIntxMap
from vfio_advisor.facts.interrupts import Interrupts, IrqLine, SkippedRow
from vfio_advisor.facts.iommu import VfioFacts
from vfio_advisor.facts.kernel import KernelFacts
from vfio_advisor.facts.pci import IntxMasking, PciDevice
from vfio_advisor.facts.pci_config import UNKNOWN as _UNKNOWN_PIN
from vfio_advisor.facts.platform import IommuState, Posting


class HostInterrupts(NamedTuple):
    """How one assigned device signals interrupts on the host right now."""

    mode: str  # "intx" | "msi" | "msix" | "none" | "unknown"
    irqs: tuple[int, ...]
    intx_irq: int | None  # the device's INTx line on the host
    shared_with: tuple[str, ...]  # other handlers on that line
    intx_count: int | None  # vfio-intx count, when on INTx
    intx_delta: int | None  # its increase over the sample, when sampled
    # Cumulative count of every vfio vector of the device ("irq" -> total);
    # the daemon's rates come from these (its Sampler reads them per IRQ from
    # /sys/kernel/irq/N/per_cpu_count, kernel/irq/irqdesc.c).
    vector_counts: tuple[tuple[str, int], ...] = ()

    @property
    def on_intx(self) -> bool:
        return self.mode == "intx"

    @property
    def intx_label(self) -> str | None:
        return None if self.intx_irq is None else str(self.intx_irq)


UNKNOWN_INTERRUPTS = HostInterrupts("unknown", (), None, (), None, None)


class HostFacts(NamedTuple):
    kernel: KernelFacts
    interrupts: Interrupts | None
    interrupts_problem: str | None
    later: Interrupts | None  # second read, with --sample
    sample_seconds: float | None
    # facts/platform.py, read once per host: are MSIs posted to vCPUs (the
    # host's vfio-msi counters then stay flat), and the IOMMU's and interrupt
    # remapping's effective state. None where a caller built HostFacts by hand.
    posting: Posting | None = None
    iommu: IommuState | None = None
    # /proc/interrupts was read but holds no interrupt row (empty, header
    # only, nothing the parser understands): a damaged input, not a denied
    # read, though the rules see both alike (interrupts None, a problem).
    interrupts_damaged: bool = False
    # Why the second read (--sample) gave no table, None if it did or there
    # was none: the first read's checks stand, only the counters' rise over
    # the sample is not measured.
    sample_problem: str | None = None

    @property
    def interrupt_remapping(self) -> bool | None:
        """facts.platform.iommu_state's verdict and nothing else: the kernel's
        own state first (IR- chips), then the command line with the kernel's
        defaults. intel_iommu=off leaves Intel IR on (Linux 6.1,
        intel_prepare_irq_remapping ignores dmar_disabled), so no command-line
        guess may stand in for it: without an iommu state the answer is None."""
        return None if self.iommu is None else self.iommu.interrupt_remapping

    @property
    def msi_posted(self) -> bool:
        """MSI/MSI-X of assigned devices are (or may be) posted to the guest."""
        return self.posting is not None and self.posting.host_cannot_count_msi


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

    def host_line(self, nointxmask: bool) -> tuple[int | None, str]:
        """(the host INTx line vfio-pci will request when QEMU enables INTx, evidence).

        The line a handler holds now (/proc/interrupts) is certain. Otherwise
        sysfs `irq`: on x86 with ACPI the kernel sets pdev->irq from _PRT when
        the device is enabled (drivers/acpi/pci_irq.c acpi_pci_irq_enable,
        Linux 6.1), which vfio-pci does only when QEMU opens the device
        (vfio_pci_core_enable); a device nobody enabled since boot still shows
        the value firmware left in Interrupt Line (drivers/pci/probe.c
        pci_read_irq). Devices behind one pin of one slot always share the line.
        `nointxmask`: the host's vfio_pci parameter, which decides whether the
        nointx IDs have a pin at all (PciDevice.guest_pin).
        """
        pci, irq = self.device, self.interrupts
        if pci is None or pci.intx_pin in (None, _UNKNOWN_PIN) or not pci.intx_pin:
            return None, "no INTx pin"
        if pci.guest_pin(nointxmask) == 0:
            return None, ("vfio-pci shows this device without an INTx pin (an SR-IOV VF, "
                          "or vfio_pci_nointx with nointxmask off)")
        if irq.intx_irq is not None:
            return irq.intx_irq, f"/proc/interrupts: IRQ {irq.intx_irq}"
        if irq.mode in ("msi", "msix") or not pci.irq:
            # While MSI is on, sysfs irq may be the first MSI vector (msi.c).
            return None, "line unknown while the device is on MSI"
        return pci.irq, f"sys/bus/pci/devices/{self.address}/irq: {pci.irq}"


class OtherDomainDevice(NamedTuple):
    """A device another defined domain assigns (for the cross-domain line check)."""

    domain: str
    device: AssignedDevice


class DomainFacts(NamedTuple):
    domain: Domain
    host: HostFacts
    devices: tuple[AssignedDevice, ...]
    guest_intx: GuestIntxMap
    # Devices of the other defined domains (advise gives them; the hook, which
    # must not call libvirt, sees its own domain only and leaves this empty).
    others: tuple[OtherDomainDevice, ...] = ()
    # facts/iommu.py: IOMMU groups of the assigned devices, their members'
    # drivers, vfio-pci's presence (None where a caller built DomainFacts by hand).
    vfio: VfioFacts | None = None

    def siblings(self, dev: AssignedDevice) -> tuple[AssignedDevice, ...]:
        """Other functions of the same physical host device assigned to this domain.

        An SR-IOV VF is nobody's sibling, though VFs share host slots (with
        ARI, 8 VFs a slot): the kernel gives each VF its own routing ID from
        the PF's First VF Offset and Stride, and clears its multifunction
        flag (Linux 6.1 drivers/pci/iov.c pci_iov_add_virtfn,
        pci_iov_virtfn_devfn). Each is a device of its own."""
        if _sriov_vf(dev):
            return ()
        return tuple(d for d in self.devices if d is not dev and not _sriov_vf(d)
                     and same_card(d.address, dev.address))

    def device(self, bdf: str) -> AssignedDevice | None:
        return next((d for d in self.devices if d.address == bdf), None)

    def interrupts_unread(self) -> tuple[AssignedDevice, ...]:
        """The devices whose interrupt mode and line sharing could not be
        judged because /proc/interrupts was damaged: every device when the
        table has no rows, else those with a row not read whole that may be
        theirs (device_rows_unread). A denied or missing file is not damage."""
        host = self.host
        if host.interrupts_damaged:
            return self.devices
        table = host.interrupts
        if table is None or not table.skipped:
            return ()
        return tuple(d for d in self.devices if device_rows_unread(d.address, d.device, table))


def host_pins(devices, nointxmask: bool) -> dict[str, int | None]:
    """Host BDF -> the INTx pin vfio-pci gives the guest (PciDevice.guest_pin;
    None: unknown), for the guest INTx map and the fix planner alike."""
    return {d.address: (d.device.guest_pin(nointxmask) if d.device else None) for d in devices}


def _sriov_vf(dev: AssignedDevice) -> bool:
    return dev.device is not None and dev.device.sriov_vf


def same_card(a: str, b: str) -> bool:
    """Two functions of one physical device: same domain:bus:slot."""
    return a.rsplit(".", 1)[0] == b.rsplit(".", 1)[0]


def device_interrupts(bdf: str, device: PciDevice | None, table: Interrupts | None,
                      later: Interrupts | None = None) -> HostInterrupts:
    """The device's vfio vectors in `table` (the full /proc/interrupts, or
    the rows the daemon's sampler read), and its INTx line's other handlers.
    `later`: a second read, for the INTx line's increase (advise --sample)."""
    if table is None or (table.skipped and device_rows_unread(bdf, device, table)):
        return UNKNOWN_INTERRUPTS
    if later is not None and later.skipped and device_rows_unread(bdf, device, later):
        later = None  # no increase from a second read that lost the device's rows
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
    elif device is not None and device.msi_irqs and device.driver != "vfio-pci":
        # A host driver (not vfio-pci) owns MSI vectors. vfio-pci's own show
        # up as vfio-msi/vfio-msix handlers (drivers/vfio/pci/vfio_pci_intrs.c).
        mode, irqs = "msi", device.msi_irqs
    else:
        mode = "none"
    if intx_line is None and device is not None and device.irq:
        candidate = table.by_irq().get(str(device.irq))
        # While MSI is on, older kernels put the first MSI vector in sysfs `irq`.
        if candidate is not None and not (candidate.chip and "MSI" in candidate.chip):
            intx_line = candidate
    shared = tuple(h for h in intx_line.handlers if not own_handler(h, bdf, device)) if intx_line else ()
    count = delta = None
    if mode == "intx" and intx_line is not None:
        count = intx_line.total
        if later is not None:
            after = later.by_irq().get(intx_line.irq)
            if after is not None and any(v.bdf == bdf and v.mode == "intx" for v in after.vfio):
                delta = max(after.total - count, 0)
            else:
                delta = 0  # the handler went away: no longer on INTx
    counts = tuple(sorted({line.irq: line.total for line, _ in vfio}.items()))
    return HostInterrupts(mode=mode, irqs=irqs,
                          intx_irq=intx_line.number if intx_line else None,
                          shared_with=shared, intx_count=count, intx_delta=delta,
                          vector_counts=counts)


def device_rows_unread(bdf: str, device: PciDevice | None,
                       table: Interrupts) -> tuple[SkippedRow, ...]:
    """The rows of `table` not read whole that may be the device's, so that
    its mode and its line's other handlers are unknown:
    - a row whose text names it (its vfio handler, or a host driver's action
      or MSI chip carrying its BDF);
    - a row on one of its own IRQs: sysfs `irq` (its INTx line, whose other
      handlers the host line sharing rules read) or a vector in msi_irqs/;
    - while none of its vfio rows was read whole, a row cut before any vfio
      handler it held could be read, which may be the one that would show
      it on INTx or MSI.
    A device whose vfio rows were all read whole keeps its verdict: vfio-pci
    enables one interrupt type at a time (drivers/vfio/pci/vfio_pci_intrs.c,
    Linux 6.1: vfio_intx_enable and vfio_msi_enable return -EINVAL unless
    is_irq_none), so another row cannot change it, and its INTx row lists
    the line's sharers.
    """
    own = set()
    if device is not None:
        own.update(str(i) for i in (device.irq, *(device.msi_irqs or ())) if i)
    rows = tuple(r for r in table.skipped if r.names(bdf) or (r.irq is not None and r.irq in own))
    if rows or table.vfio_lines(bdf):
        return rows
    return tuple(r for r in table.skipped if r.anonymous)


# Host drivers whose IRQ handler is named after something other than the
# driver: the USB HCDs name it after their hc_driver's description
# ("ehci_hcd:usb1" under ehci-pci, "ohci_hcd:usb7" under ohci-pci:
# drivers/usb/core/hcd.c usb_hcd_request_irqs, "%s:usb%d"), and
# snd_emu10k1 said "EMU10K1" until it took KBUILD_MODNAME.
DRIVER_HANDLER_NAMES = {
    "ehci_pci": ("ehci_hcd",),
    "ohci_pci": ("ohci_hcd",),
    "snd_emu10k1": ("emu10k1",),
}


def own_handler(handler: str, bdf: str, device: PciDevice | None) -> bool:
    """Is this /proc/interrupts action the device's own?

    Its vfio-intx, or its host driver's handler: with managed='yes' libvirt
    unbinds that driver before QEMU opens the device, which frees the line.
    Drivers name actions after the BDF, after themselves
    ("snd_hda_intel:card0"), after their USB bus ("ehci_hcd:usb1") or
    network interface ("enp5s0"). Where the device's sysfs shows its own
    root hubs or cards (PciDevice.handler_names), an action naming another
    one ("snd_hda_intel:card1" of a second card on the line) is not its own.
    """
    if handler == f"vfio-intx({bdf})" or bdf in handler:
        return True
    driver = device.driver if device is not None else None
    if not driver or driver == "vfio-pci":
        return False
    names = device.handler_names
    if handler in names:
        return True  # a network interface's name, or "usb1" itself
    _, colon, suffix = handler.rpartition(":")
    if colon and names:
        kind = suffix.rstrip("0123456789")
        mine = [n for n in names if n.rstrip("0123456789") == kind and n != kind]
        if mine:
            return suffix in mine
    norm = handler.replace("-", "_").lower()
    drv = driver.replace("-", "_").lower()
    return any(norm == name or norm.startswith(name + ":")
               for name in (drv, *DRIVER_HANDLER_NAMES.get(drv, ())))
