"""Edits of a libvirt domain XML tree, as replayable operations.

A fix is a list of `Op`s, each naming what it changes by a key that does not
depend on formatting: a <hostdev> by its host source address, a PCI
controller by its index, another device by its element name and current guest
address. The planner applies them to its working copy; `--apply` replays the
same list on the XML it fetched over the read-write connection (with
VIR_DOMAIN_XML_SECURE, so passwords in <graphics> survive the define).

Attribute formats follow what libvirt writes (virPCIDeviceAddressFormat in
libvirt src/util/virpci.c: domain 0x%04x, bus 0x%02x, slot 0x%02x,
function 0x%x).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lxml import etree

from vfio_advisor.facts.domain import (
    XPATH, PciAddress, address_of, int_or_none, pci_hostdev_elements, source_address_of,
)


def find(root: etree._Element, key: tuple) -> etree._Element:
    """key: ("hostdev", host BDF) | ("controller", index) | ("device", selector, guest address)."""
    kind = key[0]
    if kind == "hostdev":
        for el in pci_hostdev_elements(root):
            if str(source_address_of(el)) == key[1]:
                return el
    elif kind == "controller":
        for el in root.xpath(XPATH["pci_controllers"]):
            if int_or_none(el.get("index")) == key[1]:
                return el
    elif kind == "device":
        for el in root.xpath(f"{XPATH['devices']}/{key[1]}"):
            if str(address_of(el)) == key[2]:
                return el
    raise LookupError(f"{describe_key(key)} is not in the domain XML")


def device_key(el: etree._Element, address: PciAddress) -> tuple:
    """The key of an emulated device at `address`: its element, and for a
    controller its type (libvirt's <controller type=...> share one tag)."""
    selector = el.tag if el.tag != "controller" else f"controller[@type='{el.get('type')}']"
    return ("device", selector, str(address))


def describe_key(key: tuple) -> str:
    if key[0] == "hostdev":
        return f"hostdev {key[1]}"
    if key[0] == "controller":
        return f"pci controller index {key[1]}"
    return f"<{key[1]}> at {key[2]}"


def _set_address(el: etree._Element, addr: PciAddress, multifunction: bool | None) -> None:
    a = el.find(XPATH["address"])
    if a is None:
        a = etree.SubElement(el, XPATH["address"])
        _indent_new_child(el, a)
    keep = {k: v for k, v in a.attrib.items()
            if k not in ("type", "domain", "bus", "slot", "function", "multifunction")}
    old_multifunction = a.get("multifunction")
    a.attrib.clear()
    a.set("type", "pci")
    a.set("domain", f"0x{addr.domain:04x}")
    a.set("bus", f"0x{addr.bus:02x}")
    a.set("slot", f"0x{addr.slot:02x}")
    a.set("function", f"0x{addr.function:x}")
    if multifunction:
        a.set("multifunction", "on")
    elif multifunction is None and old_multifunction is not None and addr.function == 0:
        # None: keep what the user had, on a function 0. A device moved to
        # another function drops it: QEMU reads multifunction on function 0
        # only (hw/pci/pci.c pci_init_multifunction), and a stale 'on' on
        # function 1 says the slot is something it is not.
        a.set("multifunction", old_multifunction)
    for k, v in keep.items():
        a.set(k, v)


def _indent_new_child(parent: etree._Element, child: etree._Element) -> None:
    """Give a new last child the indentation of its siblings."""
    siblings = [c for c in parent if c is not child]
    if siblings:
        prev = siblings[-1]
        child.tail = prev.tail
        prev.tail = (parent.text or "\n")
    else:
        depth = len(list(parent.iterancestors()))
        parent.text = "\n" + "  " * (depth + 1)
        child.tail = "\n" + "  " * depth


@dataclass(frozen=True)
class Op:
    """One edit. kind:
    set-address   key, address, multifunction (True on, False off, None keep): move a device
    add-pci-controller  index, model, address, multifunction: a new <controller type='pci'>
    set-attr      xpath (relative to <domain>, must exist), name, value
    ensure-ioapic value: <features><ioapic driver=value/></features>
    set-controller-index  key, index: renumber a pci controller, its devices follow
    set-controller-model  key, model
    remove        key
    append-device value (a device element's XML, written by vfio-advisor): a new last device
    """

    kind: str
    key: tuple = ()
    address: PciAddress | None = None
    multifunction: bool | None = None
    model: str | None = None
    index: int | None = None
    xpath: str | None = None
    name: str | None = None
    value: str | None = None

    def apply(self, root: etree._Element) -> None:
        if self.kind == "set-address":
            _set_address(find(root, self.key), self.address, self.multifunction)
        elif self.kind == "add-pci-controller":
            devices = root.find(XPATH["devices"])
            if devices is None:
                raise LookupError("the domain has no <devices>")
            el = etree.Element("controller", type="pci", index=str(self.index), model=self.model)
            existing = root.xpath(XPATH["pci_controllers"])
            anchor = existing[-1] if existing else None
            if anchor is not None:
                anchor.addnext(el)
                el.tail = anchor.tail
            else:
                devices.append(el)
                _indent_new_child(devices, el)
            el.text = None
            _set_address(el, self.address, self.multifunction)
            depth = len(list(el.iterancestors()))
            el.text = "\n" + "  " * (depth + 1)
            el[-1].tail = "\n" + "  " * depth
        elif self.kind == "set-attr":
            found = root.xpath(self.xpath)
            if not found:
                raise LookupError(f"{self.xpath} is not in the domain XML")
            found[0].set(self.name, self.value)
        elif self.kind == "ensure-ioapic":
            features = root.find(XPATH["features"])
            if features is None:
                features = etree.SubElement(root, XPATH["features"])
                _indent_new_child(root, features)
            ioapic = features.find(XPATH["features_ioapic"])
            if ioapic is None:
                ioapic = etree.SubElement(features, XPATH["features_ioapic"])
                _indent_new_child(features, ioapic)
            ioapic.set("driver", self.value)
        elif self.kind == "set-controller-index":
            # The bus a controller provides is its index: the devices on it
            # follow (libvirt resolves <address bus=N> to the controller
            # with index N, src/conf/domain_addr.c).
            old = self.key[1]
            el = find(root, self.key)
            el.set("index", str(self.index))
            # libvirt gives a root port or bridge without a chassis its
            # index (pcie-root-port chassis, pci-bridge chassisNr; libvirt
            # 9.0), so a chassis that was its old index moves with it.
            # Kept, it collides with the next controller libvirt adds at
            # the old index (a USB controller's root port on a define of
            # the user's file), and QEMU 7.2 refuses to start: "Can't add
            # chassis slot, error -16" (hw/pci/pcie_port.c pcie_chassis_add_slot:
            # one (chassis, slot) pair per port).
            target = el.find("target")
            for name in ("chassis", "chassisNr"):
                if target is not None and int_or_none(target.get(name)) == old:
                    target.set(name, str(self.index))
            for dev in root.xpath(XPATH["device_elements"]):
                a = address_of(dev)
                if a is not None and a.bus == old and dev is not el:
                    dev.find(XPATH["address"]).set("bus", f"0x{self.index:02x}")
        elif self.kind == "set-controller-model":
            find(root, self.key).set("model", self.model)
        elif self.kind == "remove":
            el = find(root, self.key)
            parent = el.getparent()
            prev = el.getprevious()
            if prev is not None:
                prev.tail = el.tail
            elif parent is not None:
                parent.text = el.tail
            parent.remove(el)
        elif self.kind == "append-device":
            devices = root.find(XPATH["devices"])
            if devices is None:
                raise LookupError("the domain has no <devices>")
            el = etree.fromstring(self.value)
            devices.append(el)
            _indent_new_child(devices, el)
        else:
            raise ValueError(f"programming error: unknown op {self.kind}")

    def to_json(self) -> dict:
        out: dict = {"op": self.kind}
        if self.key:
            out["target"] = describe_key(self.key)
        if self.address is not None:
            out["address"] = str(self.address)
        if self.multifunction:
            out["multifunction"] = "on"
        for name in ("model", "index", "xpath", "name", "value"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def apply_ops(root: etree._Element, ops: list[Op]) -> etree._Element:
    """A copy of `root` with `ops` applied (the original is untouched)."""
    new = copy.deepcopy(root)
    for op in ops:
        op.apply(new)
    return new


@dataclass
class Occupancy:
    """PCI addresses in use in a domain XML: (bus, slot) -> functions."""

    slots: dict[tuple[int, int], set[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, root: etree._Element) -> "Occupancy":
        occ = cls()
        for el in root.xpath(XPATH["device_elements"]):
            a = address_of(el)
            if a is not None:
                occ.slots.setdefault((a.bus, a.slot), set()).add(a.function)
        return occ

    def used(self, bus: int, slot: int, function: int | None = None) -> bool:
        fns = self.slots.get((bus, slot), set())
        return bool(fns) if function is None else function in fns


def next_controller_index(root: etree._Element) -> int:
    indexes = [int_or_none(el.get("index")) for el in root.xpath(XPATH["pci_controllers"])]
    return max((i for i in indexes if i is not None), default=0) + 1
