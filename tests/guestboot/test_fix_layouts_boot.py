"""The boot check of fix kinds that move whole slots and convert chipsets:
for each named case, the original and the fixed layout boot in real QEMU
(TCG) through a real libvirtd, and the guest must enumerate, after the fix,
every PCI function it enumerated before; the INTx line it reports for each
assigned device must be the one the routing model (guest-irqs') predicts
for the fixed XML.

- tests/data/fix/adv-q35-hostdev-holds-slot.xml (VA5001): an INTx card at
  00:02.0 holds the slot of three pcie-root-ports (00:02.1-.3), an e1000e
  behind the first. Moving the card alone hid the ports and the NIC from
  the guest (a slot without function 0 is not scanned).
- tests/data/fix/adv-i440fx-sata-lpc.xml (VA4001): i440FX to Q35 with the
  SATA controller at 00:03.0 and a virtio-serial controller at 00:1f.0.

Assigned devices are booted as stand-ins with the same INTx pin at the same
guest address (an e1000e: pin A, a PCIe endpoint), as in
tests/guestboot/test_fix_routing.py, whose guest, boot script and console
parsing this reuses. Disks are dropped (no image); everything else is the
layout as planned. Both boot in one libvirtd: about 40 s under TCG.

Needs what that tier needs (root, libvirtd, QEMU, Debian's archive for the
first guest build).
"""

from __future__ import annotations

import subprocess

import pytest
from lxml import etree

from tests.fix.conftest import DATA, HOST_ROOT
from tests.guestboot.test_routing_real_qemu import (
    BOOT, BUILD, GUEST_CACHE, WITH_LIBVIRTD, _missing, guest_functions, slot_path,
)
from tests.support.journal import run_in_journal
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.guest_intx import build_guest_intx_map
from vfio_advisor.fix.planner import Analyzer, plan_domain

ROUTING_LAYOUT = DATA.parents[1] / "data/domains/routing/routing-q35-rootports.xml"
STAND_IN = {1: "e1000e"}  # INTx pin -> an emulated PCIe endpoint with that pin (QEMU 7.2)
CASES = {
    "holds-slot": ("adv-q35-hostdev-holds-slot.xml", "VA5001"),
    "sata-lpc": ("adv-i440fx-sata-lpc.xml", "VA4001"),
}


def bootable(xml: str, host_pins: dict, name: str) -> str:
    """`xml` as a routing-tier guest: its kernel, console and lifecycle,
    TCG, the domain's own machine type, stand-ins for hostdevs, no disks."""
    dom = etree.fromstring(xml.encode())
    tier = etree.parse(str(ROUTING_LAYOUT)).getroot()
    machine = dom.find("os/type").get("machine")
    dom.set("type", "qemu")
    dom.find("name").text = name
    for tag in ("uuid", "metadata", "os", "on_poweroff", "on_reboot", "memory", "currentMemory"):
        for el in dom.findall(tag):
            dom.remove(el)
    for tag in ("memory", "os", "on_poweroff", "on_reboot"):
        dom.append(tier.find(tag))
    dom.find("os/type").set("machine", machine)
    devices = dom.find("devices")
    serial = tier.find("devices/serial")
    serial.find("source").set("path", f"@WORK@/{name}.console")
    devices.append(serial)
    for el in devices.findall("disk") + devices.findall("interface[@type='network']"):
        devices.remove(el)
    for hd in devices.findall("hostdev"):
        src = hd.find("source/address")
        bdf = "{:04x}:{:02x}:{:02x}.{:x}".format(
            *(int(src.get(k), 16) for k in ("domain", "bus", "slot", "function")))
        stand_in = etree.Element("interface", type="user")
        etree.SubElement(stand_in, "model", type=STAND_IN[host_pins[bdf]])
        stand_in.append(hd.find("address"))
        hd.addprevious(stand_in)
        devices.remove(hd)
    return etree.tostring(dom, encoding="unicode")


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    build = subprocess.run([str(BUILD), str(GUEST_CACHE)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"routing-tier guest could not be built (Debian's archive?): {build.stderr[-300:]}")
    analyzer = Analyzer(str(HOST_ROOT))
    work = tmp_path_factory.mktemp("fixkinds")
    (work / "hooks").mkdir()
    layouts = work / "layouts"
    layouts.mkdir()
    plans = {}
    for case, (file, rule) in CASES.items():
        plan = plan_domain(analyzer, (DATA / file).read_text())
        assert plan.changes and plan.changes[0].rule == rule, plan.unfixed
        plans[case] = plan
        pins = plan.before.host_pins()
        (layouts / f"{case}-before.xml").write_text(bootable(plan.source_text, pins, f"{case}-before"))
        (layouts / f"{case}-after.xml").write_text(bootable(plan.fixed_text, pins, f"{case}-after"))
    run = run_in_journal(work / "journal",
                         [str(WITH_LIBVIRTD), str(work), str(work / "hooks"), "--",
                          str(BOOT), str(GUEST_CACHE), str(work),
                          *sorted(map(str, layouts.glob("*.xml")))],
                         timeout=900)
    created = {p.stem: p.read_text() for p in work.glob("*.create")}
    assert run.rc == 0, (created, run.stderr[-1000:])
    return plans, work


def _seen(work, layout):
    console = (work / f"{layout}.console").read_text(errors="replace")
    assert "VFIOADV-END" in console, console[-2000:]
    live = parse_domain_xml((work / f"{layout}.live.xml").read_bytes())
    return guest_functions(console)[0], live


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_guest_sees_every_function_it_saw_before(booted, case):
    plans, work = booted
    before, _ = _seen(work, f"{case}-before")
    after, _ = _seen(work, f"{case}-after")
    # Every function the guest enumerated before is enumerated after (a
    # chipset conversion changes the chipset's own functions: compare the
    # devices the domain XML places, by their count of INTx pins too).
    assert len(after) >= len(before) - _chipset_functions(plans[case]), (sorted(before), sorted(after))
    live_after = parse_domain_xml((work / f"{case}-after.live.xml").read_bytes())
    missing = [f"{d.guest.address} <{d.element}>" for d in live_after.emulated
               if d.guest is not None and slot_path(live_after, d.guest.address) not in after]
    missing += [f"pci controller {c.index} at {c.address.address}" for c in live_after.controllers
                if c.address is not None and slot_path(live_after, c.address.address) not in after]
    assert not missing, missing


def _chipset_functions(plan) -> int:
    """Functions the chipset itself brings that a conversion removes
    (i440FX: 00:01.0 ISA, 00:01.1 IDE, 00:01.3 ACPI; Q35 brings its own at
    00:1f, which the guest sees after)."""
    if plan.before.domain.chipset == "i440fx" and plan.after.domain.chipset == "q35":
        return 3
    return 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_moved_devices_get_the_predicted_line(booted, case):
    plans, work = booted
    plan = plans[case]
    seen, live = _seen(work, f"{case}-after")
    promised = build_guest_intx_map(parse_domain_xml(plan.fixed_text), plan.before.host_pins())
    cards = [f for f in promised.functions if f.kind == "hostdev"]
    assert cards
    for fn in cards:
        path = slot_path(live, fn.guest_address)
        assert path in seen, f"{fn.host_address} at {fn.guest_address} not seen in the guest"
        pin, irq = seen[path]
        assert pin == fn.pin and irq == fn.irq, (fn.host_address, fn.guest_address, pin, irq, fn.irq)
