"""Guest INTx routing: for each guest PCI function, its pin, the root-bus slot
and pin after bridge swizzling, the chipset PIRQ link, and the guest line.

A pure function of the domain model and the host pins of assigned devices.
The rules come from QEMU, SeaBIOS and libvirt sources and were checked on
QEMU 7.2 guests (see docs/intx-routing.md in the shared docs; section numbers
below refer to it):

- bridge swizzle (QEMU hw/pci/pci.c pci_swizzle_map_irq_fn):
  pin_root = (pin + sum of slots below the root-bus device) mod 4  (3.2);
- i440FX (hw/i386/pc_piix.c pc_pci_slot_get_pirq): PIRQ = (s0 + pin_root - 1) mod 4;
  SeaBIOS wires PIRQ A,B to IRQ 10 and C,D to IRQ 11 (src/fw/pciinit.c)  (1.1-1.5);
- Q35 (hw/isa/lpc_ich9.c ich9_lpc_map_irq): slots 0-24 -> E + (s0 + pin_root) mod 4,
  25-29 and 31 -> A + pin_root, 30 -> E + pin_root; PIRQ x -> GSI 16 + x  (2.1-2.5);
- pxb (i440FX): the expander bus routes like the root bus  (3.5);
- pxb-pcie (Q35): QEMU's wiring and the guest's ACPI _PRT disagree; INTx
  behind it never reaches the guest handler (3.6, observed on QEMU 7.2).
"""

from __future__ import annotations

from typing import NamedTuple


from vfio_advisor.facts.domain import Domain, PciAddress, PciController
from vfio_advisor.facts import quirks as _quirks

PINS = "ABCD"
PIRQS = "ABCDEFGH"

# Q35: PIRQ A-H are wired to GSI 16-23 (QEMU hw/isa/lpc_ich9.c,
# ich9_lpc_map_irq / ICH9_LPC_PIC_NUM_PINS; docs/intx-routing.md 2.5).
Q35_PIRQ_GSI_BASE = 16
# Root-bus slots a Q35 guest cannot give to a device: 0x1F holds the ICH9
# LPC, SATA and SMBus functions QEMU builds in, and libvirt keeps 0x1E for
# the dmi-to-pci-bridge (libvirt src/qemu/qemu_domain_address.c,
# qemuDomainValidateDevicePCISlotsQ35).
Q35_RESERVED_SLOTS = frozenset({0x1E, 0x1F})
# i440FX: slot 1 is the PIIX3 (ISA bridge, IDE, USB, ACPI), QEMU hw/i386/pc_piix.c.
I440FX_RESERVED_SLOTS = frozenset({1})

# QEMU model -> INTx pin (0 = none), measured on QEMU 7.2 (section 8, step 3).
QEMU_MODEL_PIN = {
    "virtio": 1, "qxl-vga": 1, "qxl": 1, "virtio-vga": 1, "virtio-gpu": 1,
    "qemu-xhci": 1, "nec-xhci": 1, "intel-hda": 1, "ich9-intel-hda": 1, "AC97": 1,
    "ES1370": 1, "e1000": 1, "e1000e": 1, "rtl8139": 1, "vmxnet3": 1,
    "lsi53c895a": 1, "megasas": 1, "pvscsi": 1, "pci-serial": 1, "ich9-ahci": 1,
    "pci-bridge": 1, "pcie-pci-bridge": 1, "pcie-root-port": 1, "ioh3420": 1,
    "VGA": 0, "bochs-display": 0, "i6300esb": 0, "pvpanic-pci": 0,
    "pci-testdev": 0, "i82801b11-bridge": 0, "piix3-ide": 0,
    "piix3-usb-uhci": 4, "ich9-usb-uhci1": 1, "ich9-usb-uhci2": 2,
    "ich9-usb-uhci3": 3, "ich9-usb-ehci1": 4,
}

# QEMU models with MSI or MSI-X, whose guest drivers normally use it: on a
# shared INTx line they load it only until their driver loads. (QEMU sources:
# virtio-pci vectors, xhci/ahci/hda/e1000e/vmxnet3/megasas msi(x) properties,
# root ports' MSI for PME/hotplug.) The PCI bridges too: their pin only
# serves their SHPC hotplug controller, which has MSI (hw/pci-bridge/
# pcie_pci_bridge.c and pci_bridge_dev.c: msi_init with msi=auto, QEMU 7.2)
# and which Linux's shpchp enables (drivers/pci/hotplug/shpchp_hpc.c
# shpc_init, pci_enable_msi); even on INTx it raises one only at a hotplug
# event. Controllers go by their libvirt model, devices by QEMU's.
QEMU_MODEL_MSI = frozenset({
    "virtio", "virtio-vga", "virtio-gpu", "qemu-xhci", "nec-xhci", "ich9-ahci",
    "intel-hda", "ich9-intel-hda", "e1000e", "vmxnet3", "megasas", "pcie-root-port",
    "ioh3420", "pci-bridge", "pcie-to-pci-bridge", "pcie-pci-bridge",
})

# libvirt element/model -> QEMU model (libvirt src/qemu/qemu_command.c names).
LIBVIRT_TO_QEMU = {
    ("interface", "virtio"): "virtio", ("interface", "e1000"): "e1000",
    ("interface", "e1000e"): "e1000e", ("interface", "rtl8139"): "rtl8139",
    ("interface", "vmxnet3"): "vmxnet3",
    ("video", "qxl"): "qxl-vga", ("video", "virtio"): "virtio-vga",
    ("video", "vga"): "VGA", ("video", "bochs"): "bochs-display",
    ("sound", "ich9"): "ich9-intel-hda", ("sound", "ich6"): "intel-hda",
    ("sound", "ac97"): "AC97", ("sound", "es1370"): "ES1370",
    ("controller", "usb:qemu-xhci"): "qemu-xhci", ("controller", "usb:nec-xhci"): "nec-xhci",
    ("controller", "usb:piix3-uhci"): "piix3-usb-uhci",
    ("controller", "usb:ich9-uhci1"): "ich9-usb-uhci1",
    ("controller", "usb:ich9-uhci2"): "ich9-usb-uhci2",
    ("controller", "usb:ich9-uhci3"): "ich9-usb-uhci3",
    ("controller", "usb:ich9-ehci1"): "ich9-usb-ehci1",
    ("controller", "sata:default"): "ich9-ahci",
    ("controller", "scsi:virtio-scsi"): "virtio", ("controller", "scsi:lsilogic"): "lsi53c895a",
    ("controller", "scsi:megasas"): "megasas", ("controller", "scsi:vmpvscsi"): "pvscsi",
    ("controller", "virtio-serial:default"): "virtio",
    ("controller", "ide:default"): "piix3-ide",
    ("watchdog", "i6300esb"): "i6300esb", ("panic", "pvpanic"): "pvpanic-pci",
    ("serial", "pci-serial"): "pci-serial",
}
# Elements whose PCI device is always virtio (pin A) when they have a PCI address.
VIRTIO_ELEMENTS = frozenset({"disk", "memballoon", "rng", "input", "vsock", "filesystem",
                             "iommu", "crypto", "memory"})

# libvirt <controller type='pci' model=...> -> QEMU device and own pin.
CONTROLLER_PIN = {
    "pci-bridge": 1, "pcie-to-pci-bridge": 1, "pcie-root-port": 1, "dmi-to-pci-bridge": 0,
    "pci-expander-bus": 0, "pcie-expander-bus": 0,
    # x3130-upstream / xio3130-downstream: no INTx pin (their services use MSI);
    # read from a QEMU 7.2 guest by tests/guestboot.
    "pcie-switch-upstream-port": 0, "pcie-switch-downstream-port": 0,
}

# Intel i40e and X550 IDs that vfio-pci reports with pin 0 (vfio_pci_core.c,
# vfio_pci_nointx): one table, facts/quirks.py. 0x37d3 is not in the kernel's
# list (Linux 6.1.176) and is gone.
VFIO_NOINTX = _quirks.VFIO_NOINTX_IDS

I440FX_PIRQ_IRQ = {0: 10, 1: 10, 2: 11, 3: 11}  # SeaBIOS/OVMF (after edk2 PR #1242)

NOTE_REBALANCE = ("i440FX: IRQ is the SeaBIOS/OVMF default for this link; a Linux guest "
                  "in IOAPIC mode may rebalance links between IRQ 10 and 11")
NOTE_PXB_PCIE = ("behind a pcie-expander-bus (pxb-pcie) on Q35: QEMU raises a GSI the guest's "
                 "ACPI _PRT does not name, so INTx never reaches the guest driver "
                 "(QEMU pxb_map_irq_fn with ich9_lpc_map_irq; seen on QEMU 7.2); use MSI")


class GuestFunction(NamedTuple):
    guest_address: PciAddress
    kind: str  # "hostdev" | "emulated" | "controller" | "implicit"
    model: str | None
    host_address: str | None
    pin: int | None  # 0 none, 1..4 = A..D, None unknown
    root_slot: int | None = None
    root_pin: int | None = None  # 0..3
    pirq: int | None = None  # 0..7
    irq: int | None = None  # guest IRQ (i440FX) or GSI (Q35)
    predictable: bool = True
    notes: tuple[str, ...] = ()

    @property
    def pin_letter(self) -> str | None:
        return PINS[self.pin - 1] if self.pin else None

    @property
    def routed(self) -> bool:
        return self.irq is not None and self.predictable


class GuestIntxMap(NamedTuple):
    chipset: str
    functions: tuple[GuestFunction, ...]
    unaddressed: tuple[str, ...]  # devices without a guest address yet

    def sharers(self, fn: GuestFunction) -> tuple[GuestFunction, ...]:
        if not fn.routed:
            return ()
        return tuple(f for f in self.functions
                     if f is not fn and f.routed and f.irq == fn.irq)

    def by_address(self) -> dict[PciAddress, GuestFunction]:
        return {f.guest_address: f for f in self.functions}


def q35_pirq(root_slot: int, root_pin: int) -> int:
    if root_slot <= 24:
        return 4 + (root_slot + root_pin) % 4
    if root_slot == 30:
        return 4 + root_pin
    return root_pin


def i440fx_pirq(root_slot: int, root_pin: int) -> int:
    return (root_slot + root_pin - 1) % 4


def _emulated_model(element: str, model: str | None) -> str | None:
    if element in VIRTIO_ELEMENTS:
        return "virtio"
    if (element, model) in LIBVIRT_TO_QEMU:
        return LIBVIRT_TO_QEMU[(element, model)]
    if element == "controller" and model and model.endswith(":virtio"):
        return "virtio"
    if model == "virtio" or (model and model.startswith("virtio")):
        return "virtio"
    return None


def _implicit(chipset: str, occupied: set[PciAddress]) -> list[GuestFunction]:
    """Functions QEMU creates that libvirt's XML does not list (section 5.1)."""
    out = []
    if chipset == "i440fx":
        table = [((0, 1, 0), "PIIX3 ISA bridge", 0), ((0, 1, 3), "PIIX4 PM", 1)]
    elif chipset == "q35":
        table = [((0, 0x1F, 0), "ICH9 LPC", 0), ((0, 0x1F, 3), "ICH9 SMBus", 1)]
    else:
        table = []
    for (bus, slot, fn), model, pin in table:
        addr = PciAddress(0, bus, slot, fn)
        if addr not in occupied:
            out.append(GuestFunction(addr, "implicit", model, None, pin))
    return out


def build_guest_intx_map(domain: Domain, host_pins: dict[str, int | None]) -> GuestIntxMap:
    """`host_pins`: host BDF -> Interrupt Pin register as vfio-pci reports it
    (PciDevice.guest_pin under the host's nointxmask: 0 for SR-IOV VFs, and
    for the nointx IDs while nointxmask is off), or None when unknown."""
    chipset = domain.chipset
    controllers = {c.index: c for c in domain.controllers}
    functions: list[GuestFunction] = []
    unaddressed: list[str] = []

    for hd in domain.hostdevs:
        if hd.guest is None:
            unaddressed.append(f"hostdev {hd.source}")
            continue
        functions.append(GuestFunction(hd.guest.address, "hostdev", None, str(hd.source),
                                       host_pins.get(str(hd.source))))
    for dev in domain.emulated:
        if dev.guest is None:
            continue
        qemu = _emulated_model(dev.element, dev.model)
        pin = QEMU_MODEL_PIN.get(qemu) if qemu else None
        functions.append(GuestFunction(dev.guest.address, "emulated",
                                       qemu or f"{dev.element}:{dev.model}", None, pin))
    for ctrl in domain.controllers:
        if ctrl.address is None or ctrl.model in (None, "pci-root", "pcie-root"):
            continue
        functions.append(GuestFunction(ctrl.address.address, "controller", ctrl.model, None,
                                       CONTROLLER_PIN.get(ctrl.model)))
    functions += _implicit(chipset, {f.guest_address for f in functions})

    routed = [_route(f, chipset, controllers) for f in functions]
    routed.sort(key=lambda f: f.guest_address)
    return GuestIntxMap(chipset=chipset, functions=tuple(routed), unaddressed=tuple(unaddressed))


def _route(fn: GuestFunction, chipset: str, controllers: dict[int, PciController]) -> GuestFunction:
    notes = list(fn.notes)
    if fn.pin is None:
        notes.append("INTx pin unknown: " + ("host device unreadable, or its Interrupt Pin register invalid" if fn.kind == "hostdev"
                                             else f"no pin known for model {fn.model}"))
        return _replace(fn, notes=notes, predictable=False)
    if fn.pin == 0 or chipset not in ("i440fx", "q35"):
        if chipset not in ("i440fx", "q35"):
            notes.append("machine type is not i440FX or Q35: routing not modelled")
        return _replace(fn, notes=notes)
    p = fn.pin - 1
    total = 0
    bus, slot = fn.guest_address.bus, fn.guest_address.slot
    seen: set[int] = set()
    pxb_pcie = via_pxb = False
    while bus != 0:
        ctrl = controllers.get(bus)
        if ctrl is None or ctrl.address is None or bus in seen:
            notes.append(f"bus {bus} has no controller with an address: cannot route")
            return _replace(fn, notes=notes, predictable=False)
        seen.add(bus)
        if ctrl.model == "pci-expander-bus":
            via_pxb = True
            break  # pxb: the expander bus routes like a root bus (3.5)
        if ctrl.model == "pcie-expander-bus":
            pxb_pcie = True
            break
        total += slot
        bus, slot = ctrl.address.address.bus, ctrl.address.address.slot
    root_pin = (p + total) % 4
    if pxb_pcie:
        notes.append(NOTE_PXB_PCIE)
        return _replace(fn, notes=notes, root_slot=slot, root_pin=root_pin, predictable=False)
    if chipset == "i440fx":
        # The LNKS exception is PCI0's only: the pxb _PRT is build_prt(false).
        if slot == 1 and root_pin == 0 and not via_pxb:
            # 00:01.x INTA is the PIIX4 PM's LNKS, fixed at IRQ 9 (SCI).
            return _replace(fn, notes=notes + ["slot 1 INTA is LNKS (ACPI SCI, IRQ 9)"],
                            root_slot=slot, root_pin=root_pin, irq=9)
        pirq = i440fx_pirq(slot, root_pin)
        return _replace(fn, notes=notes + [NOTE_REBALANCE], root_slot=slot, root_pin=root_pin,
                        pirq=pirq, irq=I440FX_PIRQ_IRQ[pirq])
    pirq = q35_pirq(slot, root_pin)
    if slot >= 25 and slot != 30:
        notes.append("Q35 slots 25-31 use the DxxIR registers; the reset value is assumed")
    return _replace(fn, notes=notes, root_slot=slot, root_pin=root_pin, pirq=pirq, irq=Q35_PIRQ_GSI_BASE + pirq)


def _replace(fn: GuestFunction, **changes) -> GuestFunction:
    if "notes" in changes:
        changes["notes"] = tuple(changes["notes"])
    return fn._replace(**changes)


def free_line_addresses(gmap: GuestIntxMap, fn: GuestFunction) -> list[tuple[PciAddress, int]]:
    """Root-bus addresses where `fn` (same pin) would have a guest line no
    other routed function uses: [(address, line)]. Empty on i440FX when every
    IRQ is taken (it has only 10 and 11)."""
    if not fn.pin or gmap.chipset not in ("i440fx", "q35"):
        return []
    used_lines = {f.irq for f in gmap.functions if f is not fn and f.routed}
    taken_slots = {f.guest_address.slot for f in gmap.functions
                   if f.guest_address.bus == 0 and f is not fn}
    out = []
    p = fn.pin - 1
    for slot in range(1, 32):
        if slot in taken_slots or (gmap.chipset == "q35" and slot in Q35_RESERVED_SLOTS):
            continue
        if gmap.chipset == "i440fx":
            if slot in I440FX_RESERVED_SLOTS:
                continue
            line = I440FX_PIRQ_IRQ[i440fx_pirq(slot, p)]
        else:
            line = Q35_PIRQ_GSI_BASE + q35_pirq(slot, p)
        if line not in used_lines:
            out.append((PciAddress(0, 0, slot, 0), line))
    return out
