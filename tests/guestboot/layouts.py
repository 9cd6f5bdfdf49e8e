"""What the boot checks of `fix` share (test_fix_routing.py,
test_fix_layouts_boot.py, test_fix_join_boot.py): a planned domain XML made
bootable as a routing-tier guest, and the tier's guest built and a libvirtd
started to boot a set of such layouts.

A guest cannot get real assigned devices here (no IOMMU), so each <hostdev>
is booted as a stand-in with the same INTx pin at the same guest address.
Guest INTx routing depends only on the address and the pin (QEMU
hw/pci/pci.c pci_swizzle_map_irq_fn, hw/isa/lpc_ich9.c ich9_lpc_map_irq), so
the stand-ins get the lines the cards would.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from tests.guestboot.test_routing_real_qemu import BOOT, BUILD, GUEST_CACHE, REPO, WITH_LIBVIRTD, _missing
from tests.support.journal import run_in_journal

ROUTING_LAYOUT = REPO / "tests/data/domains/routing/routing-q35-rootports.xml"

# INTx pin -> (element, model) of an emulated function with that pin in
# QEMU 7.2 (checked there with `info pci`: e1000e pin A, ich9-usb-uhci2 B,
# ich9-usb-uhci3 C, ich9-usb-ehci1 D). The e1000e is a PCIe endpoint, so
# libvirt accepts it behind a pcie-root-port.
STAND_INS = {1: ("interface", "e1000e"), 2: ("controller", "ich9-uhci2"),
             3: ("controller", "ich9-uhci3"), 4: ("controller", "ich9-ehci1")}


def bootable(xml: str, host_pins: dict, name: str) -> str:
    """`xml` as a routing-tier guest (kernel, console, lifecycle, TCG, one
    vCPU: routing does not depend on the count), the domain's machine type
    and features, a stand-in with the host pin for each hostdev, no disks
    and no libvirt networks (the private daemon has none)."""
    dom = etree.fromstring(xml.encode())
    tier = etree.parse(str(ROUTING_LAYOUT)).getroot()
    machine = dom.find("os/type").get("machine")
    dom.set("type", "qemu")
    dom.find("name").text = name
    for tag in ("uuid", "metadata", "os", "on_poweroff", "on_reboot", "memory", "currentMemory", "vcpu"):
        for el in dom.findall(tag):
            dom.remove(el)
    for tag in ("memory", "vcpu", "os", "on_poweroff", "on_reboot"):
        dom.append(tier.find(tag))
    dom.find("os/type").set("machine", machine)
    # A pcie-expander-bus names its NUMA node, so its domain has <numa>:
    # its one cell gets the one vCPU and the tier's memory (libvirt 9.0
    # refuses cells with more CPUs than <vcpu>, or memory that differs).
    cells = dom.findall("cpu/numa/cell")
    assert len(cells) <= 1, f"{name}: one NUMA cell at most for a one-vCPU guest"
    for cell in cells:
        memory = dom.find("memory")  # the tier's, appended above
        cell.set("cpus", "0")
        cell.set("memory", memory.text)
        cell.set("unit", memory.get("unit", "KiB"))
    devices = dom.find("devices")
    serial = tier.find("devices/serial")
    serial.find("source").set("path", f"@WORK@/{name}.console")
    devices.append(serial)
    for el in devices.findall("disk") + devices.findall("interface[@type='network']"):
        devices.remove(el)
    usb_index = len(devices.findall("controller[@type='usb']"))
    master, companions = None, 0
    for hd in devices.findall("hostdev"):
        src = hd.find("source/address")
        bdf = "{:04x}:{:02x}:{:02x}.{:x}".format(
            *(int(src.get(k), 16) for k in ("domain", "bus", "slot", "function")))
        element, model = STAND_INS[host_pins[bdf]]
        if element == "interface":
            stand_in = etree.Element("interface", type="user")
            etree.SubElement(stand_in, "model", type=model)
        elif model == "ich9-ehci1":
            stand_in = etree.Element("controller", type="usb", index=str(usb_index), model=model)
            usb_index += 1
        else:
            # libvirt accepts an ich9-uhciN only as the companion of an EHCI
            # ("No master USB controller specified", libvirt 9.0): one
            # ich9-ehci1 at 00:1d.0, free in these layouts, is the master.
            if master is None:
                assert not [a for a in dom.iterfind(".//address[@type='pci']")
                            if int(a.get("bus"), 16) == 0 and int(a.get("slot"), 16) == 0x1D], name
                master = etree.SubElement(devices, "controller", type="usb", index=str(usb_index),
                                          model="ich9-ehci1")
                etree.SubElement(master, "address", type="pci", domain="0x0000", bus="0x00",
                                 slot="0x1d", function="0x0")
                usb_index += 1
            stand_in = etree.Element("controller", type="usb", index=master.get("index"), model=model)
            etree.SubElement(stand_in, "master", startport=str(2 * companions))
            companions += 1
        stand_in.append(hd.find("address"))
        hd.addprevious(stand_in)
        devices.remove(hd)
    return etree.tostring(dom, encoding="unicode")


def routing_guest_work(tmp_path_factory, prefix: str) -> Path:
    """The routing tier's guest built (or skip, with the reason), and a work
    directory with the hooks and layouts folders boot_layouts uses."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    build = subprocess.run([str(BUILD), str(GUEST_CACHE)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"routing-tier guest could not be built (Debian's archive?): {build.stderr[-300:]}")
    work = tmp_path_factory.mktemp(prefix)
    (work / "hooks").mkdir()
    (work / "layouts").mkdir()
    return work


def boot_layouts(work: Path, layouts: dict[str, str], timeout: float = 900):
    """Write each {name: domain XML} to the work directory's layouts folder
    and boot them all in one private libvirtd (boot-layouts.sh names each
    result file after its layout's name)."""
    for name, xml in layouts.items():
        (work / "layouts" / f"{name}.xml").write_text(xml)
    return run_in_journal(work / "journal",
                          [str(WITH_LIBVIRTD), str(work), str(work / "hooks"), "--",
                           str(BOOT), str(GUEST_CACHE), str(work),
                           *sorted(str(work / "layouts" / f"{name}.xml") for name in layouts)],
                          timeout=timeout)
