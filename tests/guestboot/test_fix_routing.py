"""The routing tier on a fixed layout: plan `fix` for a domain whose two
INTx-only assigned cards share GSI 22 (tests/data/fix/q35-two-intx.xml, host
facts from the demo host), boot the fixed layout in real QEMU (TCG) through a
real libvirtd, and check that the guest kernel gave each card the line the
fix promised -- two different lines.

A guest cannot get real assigned devices here (no IOMMU), so each <hostdev>
is booted as a stand-in with the same INTx pin at the same guest address:
an e1000e (pin A, a PCIe endpoint, so libvirt accepts it behind a
pcie-root-port). Guest INTx routing depends only on the address and the pin
(QEMU hw/pci/pci.c pci_swizzle_map_irq_fn, hw/isa/lpc_ich9.c
ich9_lpc_map_irq), so the stand-ins get the lines the cards would.

Reuses tests/guestboot's guest (build-guest.sh), boot script and console
parsing. Needs what that tier needs (root, libvirtd, QEMU, Debian's archive
for the first build).
"""

from __future__ import annotations

import subprocess

import pytest
from lxml import etree

from tests.guestboot.test_routing_real_qemu import (
    BOOT, BUILD, GUEST_CACHE, WITH_LIBVIRTD, _missing, guest_functions, slot_path,
)
from tests.support.journal import run_in_journal
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.guest_intx import build_guest_intx_map
from vfio_advisor.fix.planner import Analyzer
from vfio_advisor.fix.planner import plan_domain

from tests.fix.conftest import DATA, HOST_ROOT, REPO

ROUTING_LAYOUT = REPO / "tests/data/domains/routing/routing-q35-rootports.xml"
NAME = "fix-routing-two-intx"
STAND_IN = {1: "e1000e"}  # INTx pin -> an emulated PCIe endpoint with that pin (QEMU 7.2)


def bootable(fixed_xml: str, host_pins: dict) -> str:
    """The fixed domain as a routing-tier guest: the tier's kernel, console
    and lifecycle (from its q35 layout), TCG, and stand-ins for hostdevs."""
    dom = etree.fromstring(fixed_xml.encode())
    tier = etree.parse(str(ROUTING_LAYOUT)).getroot()
    dom.set("type", "qemu")
    dom.find("name").text = NAME
    for tag in ("uuid", "metadata", "os", "on_poweroff", "on_reboot", "memory", "currentMemory"):
        for el in dom.findall(tag):
            dom.remove(el)
    for tag in ("memory", "os", "on_poweroff", "on_reboot"):
        dom.append(tier.find(tag))
    devices = dom.find("devices")
    devices.append(tier.find("devices/serial"))
    for iface in devices.findall("interface"):
        devices.remove(iface)  # no libvirt network in the private daemon
    for hd in devices.findall("hostdev"):
        src = hd.find("source/address")
        bdf = "{:04x}:{:02x}:{:02x}.{:x}".format(*(int(src.get(k), 16) for k in ("domain", "bus", "slot", "function")))
        model = STAND_IN[host_pins[bdf]]
        stand_in = etree.SubElement(devices, "interface", type="user")
        etree.SubElement(stand_in, "model", type=model)
        stand_in.append(hd.find("address"))
        devices.remove(hd)
    text = etree.tostring(dom, encoding="unicode")
    return text.replace(f"@WORK@/{ROUTING_LAYOUT.stem}.console", f"@WORK@/{NAME}.console")


@pytest.fixture(scope="module")
def fixed_and_booted(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    build = subprocess.run([str(BUILD), str(GUEST_CACHE)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"routing-tier guest could not be built (Debian's archive?): {build.stderr[-300:]}")
    analyzer = Analyzer(str(HOST_ROOT))
    plan = plan_domain(analyzer, (DATA / "q35-two-intx.xml").read_text())
    assert [c.rule for c in plan.changes] == ["VA5001"], plan.unfixed
    pins = plan.before.host_pins()
    work = tmp_path_factory.mktemp("fixboot")
    (work / "hooks").mkdir()
    layout = work / f"{NAME}.xml.in"
    layout.write_text(bootable(plan.fixed_xml, pins))
    # boot-layouts.sh names everything after the layout file's stem
    src = work / "layouts"
    src.mkdir()
    (src / f"{NAME}.xml").write_text(layout.read_text())
    run = run_in_journal(work / "journal",
                         [str(WITH_LIBVIRTD), str(work), str(work / "hooks"), "--",
                          str(BOOT), str(GUEST_CACHE), str(work), str(src / f"{NAME}.xml")],
                         timeout=600)
    assert run.rc == 0, (work / f"{NAME}.create").read_text() if (work / f"{NAME}.create").exists() else run.stderr
    return plan, work


def test_guest_irqs_are_the_lines_the_fix_promised(fixed_and_booted):
    plan, work = fixed_and_booted
    console = (work / f"{NAME}.console").read_text(errors="replace")
    assert "VFIOADV-END" in console, console[-2000:]
    live = parse_domain_xml((work / f"{NAME}.live.xml").read_bytes())
    seen, _ = guest_functions(console)
    # The promise: the routing model on the offered XML, with the host pins.
    promised = build_guest_intx_map(parse_domain_xml(plan.fixed_xml), plan.before.host_pins())
    cards = [f for f in promised.functions if f.kind == "hostdev"]
    assert len(cards) == 2
    got = {}
    for fn in cards:
        path = slot_path(live, fn.guest_address)
        assert path in seen, f"{fn.guest_address} not seen in the guest"
        pin, irq = seen[path]
        assert pin == fn.pin
        got[fn.host_address] = irq
        assert irq == fn.irq, f"{fn.host_address}: fix promised GSI {fn.irq}, guest has {irq}"
    assert len(set(got.values())) == 2, got  # each card on a line of its own
    # and the line named in the printed change is the one the guest used
    (change,) = plan.changes
    for detail in change.details:
        bdf = detail.split(":", 3)[0] + ":" + detail.split(":", 3)[1] + ":" + detail.split(":", 3)[2]
        assert f"GSI {got[bdf]}" in detail, (detail, got)


def test_before_the_fix_the_cards_shared_a_line(fixed_and_booted):
    plan, _ = fixed_and_booted
    cards = [f for f in plan.before.facts.guest_intx.functions if f.kind == "hostdev"]
    assert len({f.irq for f in cards}) == 1  # the problem the fix removed
