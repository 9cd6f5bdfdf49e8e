"""The guest-visible PCI layout of a domain XML, and what a fix must not break.

A fix is judged on the final XML against the original: every problem below
that the fixed XML has and the original did not fails the plan. The checks
are what a guest and libvirt's qemu driver see, not what the schema allows:

- every slot in use has function 0: a guest enumerates a slot by reading
  function 0's vendor ID and skips the slot when it is absent (Linux
  drivers/pci/probe.c pci_scan_slot; QEMU hw/pci/pci.c refuses nothing
  here, so libvirt accepts such a layout and the guest loses the devices);
- every device sits on a bus reachable from the root bus (a bus index no
  controller defines gets one from libvirt);
- no two devices share an address (libvirt: "Attempted double use of PCI
  Address", src/conf/domain_addr.c virDomainPCIAddressReserveAddr);
- no controller the fix emptied or added is left without a device;
- multifunction='on' only on function 0 (QEMU reads it on function 0 only,
  hw/pci/pci.c pci_init_multifunction);
- the chipset's own functions keep their places, as libvirt 9.0
  src/qemu/qemu_domain_address.c reserves them:
  Q35 (qemuDomainValidateDevicePCISlotsQ35): 00:1f.0 the ICH9 LPC/ISA
  bridge and 00:1f.3 SMBus, always present; the SATA controller of index 0
  must be at 00:1f.2 ("Primary SATA controller must have PCI address
  0:0:1f.2"), and q35 has it even when the XML does not.
  i440FX (qemuDomainValidateDevicePCISlotsPIIX3): 00:01.0 ISA bridge,
  00:01.1 the IDE controller of index 0, 00:01.2 the PIIX3 USB controller
  of index 0, 00:01.3 the ACPI/PM bridge.
  Both: 00:00.0 is the host bridge.
"""

from __future__ import annotations

from dataclasses import dataclass

from vfio_advisor.facts.domain import XPATH, PciAddress, address_of, chipset_of, int_or_none

# The functions each chipset puts in a slot by itself, present whether the
# XML names them or not (see the module docstring for libvirt's source).
IMPLICIT = {
    "q35": {(0, 0): {0}, (0, 0x1F): {0, 3}},
    "i440fx": {(0, 0): {0}, (0, 1): {0, 3}},
}
# Controllers that are buses but need no device to be useful, or that the
# chipset provides.
ROOT_MODELS = ("pci-root", "pcie-root")


@dataclass(frozen=True)
class Placed:
    what: str  # "<hostdev> 0000:01:00.0" etc., for messages
    tag: str
    type: str | None
    model: str | None
    index: int | None  # controllers
    address: PciAddress
    multifunction: bool


def _what(el) -> str:
    if el.tag == "hostdev" or (el.tag == "interface" and el.get("type") == "hostdev"):
        src = el.find(XPATH["source_address"])
        if src is not None:
            try:
                host = PciAddress(*(int(src.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function")))
                return f"<{el.tag}> {host}"
            except ValueError:
                pass
    if el.tag == "controller":
        return f"<controller type='{el.get('type')}' index='{el.get('index')}'" + (
            f" model='{el.get('model')}'>" if el.get("model") else ">")
    return f"<{el.tag}>"


def placed_devices(root) -> list[Placed]:
    out = []
    for el in root.xpath(XPATH["device_elements"]):
        a = address_of(el)
        if a is None:
            continue
        addr_el = el.find(XPATH["address"])
        out.append(Placed(_what(el), el.tag, el.get("type"), el.get("model"),
                          int_or_none(el.get("index")) if el.tag == "controller" else None,
                          a, (addr_el.get("multifunction") or "").lower() in ("on", "yes")))
    return out


def problems(root) -> set[str]:
    """Every layout problem of this domain XML, one sentence each."""
    chipset = chipset_of(root.xpath(XPATH["os_type_machine"], smart_strings=False) or None)
    devices = placed_devices(root)
    out: set[str] = set()
    by_addr: dict[PciAddress, list[Placed]] = {}
    slots: dict[tuple[int, int, int], set[int]] = {}
    for d in devices:
        by_addr.setdefault(d.address, []).append(d)
        slots.setdefault((d.address.domain, d.address.bus, d.address.slot), set()).add(d.address.function)
    for addr, ds in by_addr.items():
        if len(ds) > 1:
            out.add(f"{' and '.join(d.what for d in ds)} share the guest address {addr}")
    for d in devices:
        if d.multifunction and d.address.function != 0:
            out.add(f"{d.what} at {d.address} has multifunction='on', which only function 0 carries")
    implicit = IMPLICIT.get(chipset, {})
    for (dom, bus, slot), fns in slots.items():
        if 0 not in fns and 0 not in implicit.get((bus, slot), set()):
            out.add(f"guest slot {dom:04x}:{bus:02x}:{slot:02x} has function(s) "
                    f"{', '.join(str(f) for f in sorted(fns))} but no function 0, so the guest "
                    "never enumerates it")
    out |= _chipset_problems(chipset, devices)
    # Reachability: a bus is a controller's index; bus 0 is the root.
    controllers = {d.index: d for d in devices if d.tag == "controller" and d.type == "pci"
                   and d.index is not None}
    roots = {int_or_none(el.get("index")) for el in root.xpath(XPATH["pci_controllers"])
             if el.get("model") in ROOT_MODELS}
    roots.add(0)

    def reachable(bus: int, seen=()) -> bool:
        if bus in roots:
            return True
        ctrl = controllers.get(bus)
        if ctrl is None:
            # libvirt adds a controller of the default model for a bus
            # index nothing defines (qemuDomainPCIAddressSetCreate,
            # "Auto-adding"), on a bus it reaches.
            return bus not in seen
        if bus in seen:
            return False
        return reachable(ctrl.address.bus, seen + (bus,))

    for d in devices:
        if not reachable(d.address.bus):
            out.add(f"{d.what} at {d.address} is on bus {d.address.bus}, which no controller "
                    "connects to the root bus")
    return out


def _chipset_problems(chipset: str, devices: list[Placed]) -> set[str]:
    out = set()
    for d in devices:
        a = d.address
        if a.bus != 0 or a.domain != 0:
            continue
        if a.slot == 0:
            out.add(f"{d.what} at {a}: 00:00.0 is the host bridge")
        if chipset == "q35" and a.slot == 0x1F:
            sata0 = d.tag == "controller" and d.type == "sata" and d.index == 0
            if a.function in (0, 3):
                out.add(f"{d.what} at {a}: the ICH9 {'LPC' if a.function == 0 else 'SMBus'} "
                        "function is always there (libvirt: \"Attempted double use of PCI Address\")")
            elif a.function == 2 and not sata0:
                out.add(f"{d.what} at {a}: 00:1f.2 is the primary SATA controller's on Q35")
        if chipset == "i440fx" and a.slot == 1:
            ok = ((a.function == 1 and d.tag == "controller" and d.type == "ide" and d.index == 0)
                  or (a.function == 2 and d.tag == "controller" and d.type == "usb" and d.index == 0
                      and (d.model or "piix3-uhci") == "piix3-uhci"))
            if not ok:
                out.add(f"{d.what} at {a}: slot 1 holds the PIIX3's own functions on i440FX")
    if chipset == "q35":
        for d in devices:
            if d.tag == "controller" and d.type == "sata" and d.index == 0 and \
                    d.address != PciAddress(0, 0, 0x1F, 2):
                out.add(f"{d.what} at {d.address}: the primary SATA controller must be at "
                        "0000:00:1f.2 on Q35 (libvirt qemuDomainValidateDevicePCISlotsQ35)")
    return out


def empty_controllers(root) -> set[int]:
    """Indexes of PCI controllers (not roots) that no device with an
    address uses as its bus."""
    used = {d.address.bus for d in placed_devices(root)}
    out = set()
    for el in root.xpath(XPATH["pci_controllers"]):
        index = int_or_none(el.get("index"))
        if index is not None and el.get("model") not in ROOT_MODELS and index not in used:
            out.add(index)
    return out


def emptied_controllers(before_root, after_root) -> set[int]:
    """Indexes of controllers empty in `after_root` that were not, or did
    not exist, in `before_root` (a controller keeps its index, or takes a
    removed one's together with its devices: then it is not empty)."""
    existed = {int_or_none(el.get("index")) for el in before_root.xpath(XPATH["pci_controllers"])}
    empty_before = empty_controllers(before_root)
    return {i for i in empty_controllers(after_root) if i not in existed or i not in empty_before}


def slot_holders(root) -> set[int]:
    """Indexes of PCI controllers at function 0 of a slot with other
    functions: empty or not, they keep that slot visible to the guest."""
    devices = placed_devices(root)
    out = set()
    for d in devices:
        if d.tag == "controller" and d.type == "pci" and d.address.function == 0 and any(
                o is not d and (o.address.domain, o.address.bus, o.address.slot)
                == (d.address.domain, d.address.bus, d.address.slot) for o in devices):
            out.add(d.index)
    return out


def new_problems(before_root, after_root) -> list[str]:
    """The layout problems the fixed XML has and the original did not."""
    found = problems(after_root) - problems(before_root)
    emptied = emptied_controllers(before_root, after_root)
    held = slot_holders(after_root)
    for index in sorted(emptied - held):
        found.add(f"pci controller index {index} is left without a device")
    return sorted(found)
