"""The boot check of the fix kinds that join a card's functions (VA4002) and
turn the irqchip back to full (VA4003): the original and the fixed layout
boot in real QEMU (TCG) through a real libvirtd, as in
tests/guestboot/test_fix_layouts_boot.py.

- tests/data/fix/q35-split-card.xml (VA4002): a GPU (05:00.0, pin A) and
  its HDMI audio (05:00.1, pin B) each behind its own root port; the fix
  puts them into one guest slot as functions 0 and 1 (multifunction='on').
- tests/data/fix/adv-i440fx-split-card.xml (VA4001 then VA4002): an OHCI
  card (08:01.0 pin A, 08:01.1 pin B) split over two i440FX slots, joined
  into one slot on Q35.
- tests/data/fix/q35-join-adds-shared-line.xml (VA4002 then VA5001): the
  join of a three-function card puts its pin B function on the HDMI audio's
  line, and the guest-line move that follows gives the audio a line of its
  own; the join is offered only with that move.
- tests/data/fix/q35-split-irqchip.xml (VA4003): <ioapic driver='qemu'/>
  to <ioapic driver='kvm'/>. Under TCG QEMU 7.2 boots it with its own
  IOAPIC (kernel_irqchip=on is a KVM accelerator property), so this checks
  libvirt's and QEMU's acceptance and the routing, not KVM's IOAPIC.

A joined card keeps each function's own INTx pin, so a stand-in must raise
INTx on that pin at that function: a card's function 1 is usually pin B.
QEMU 7.2's ICH9 USB controllers fix their pin per model (hw/usb/hcd-uhci.c,
the UHCIInfo irq_pin of ich9-usb-uhci1..3: A, B, C; hw/usb/hcd-ehci-pci.c:
pin D), and libvirt places them anywhere an address says (models
ich9-uhci1..3, ich9-ehci1). The guest reports the pin it read from config
space, so a stand-in with the wrong pin fails the check, not hides it.

The eight layouts boot in one libvirtd: 41-75 s under TCG on the shared
2-core lab machine. Needs what that tier needs (root, libvirtd,
QEMU, Debian's archive for the first guest build).
"""

from __future__ import annotations

import pytest

from tests.fix.conftest import DATA, HOST_ROOT
from tests.guestboot.layouts import boot_layouts, bootable, routing_guest_work
from tests.guestboot.test_routing_real_qemu import guest_functions, slot_path
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.guest_intx import build_guest_intx_map
from vfio_advisor.fix.planner import Analyzer, plan_domain

JOINS = {
    "q35-split-card": ("q35-split-card.xml", ["VA4002"]),
    "i440fx-split-card": ("adv-i440fx-split-card.xml", ["VA4001", "VA4002"]),
}
IRQCHIP = ("q35-split-irqchip.xml", ["VA4003"])
# A join whose new shared guest line a later stage removes (VA4002, VA5001).
JOIN_THEN_LINES = ("q35-join-adds-shared-line.xml", ["VA4002", "VA5001"])
# The agent channel `fix --guest` needs: a virtio-serial controller that
# libvirt places at define, so the boot shows where it went and that the
# guest still sees everything else.
AGENT_CHANNEL = ("q35-split-card.xml", ["VA1002"])


def planned(analyzer, file: str, rules: list[str]):
    # Only the layout kinds under test: VA1002's agent channel (a virtio-serial
    # controller libvirt places itself) is no part of what this boot checks.
    plan = plan_domain(analyzer, (DATA / file).read_text(), rules=rules)
    assert [c.rule for c in plan.changes] == rules, plan.unfixed
    return plan


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    work = routing_guest_work(tmp_path_factory, "fixjoins")
    analyzer = Analyzer(str(HOST_ROOT))
    plans = {case: planned(analyzer, file, rules) for case, (file, rules) in JOINS.items()}
    plans["irqchip"] = planned(analyzer, *IRQCHIP)
    plans["join-then-lines"] = planned(analyzer, *JOIN_THEN_LINES)
    plans["agent-channel"] = planned(analyzer, *AGENT_CHANNEL)
    layouts = {}
    for case, plan in plans.items():
        pins = plan.before.host_pins()
        layouts[f"{case}-before"] = bootable(plan.source_text, pins, f"{case}-before")
        layouts[f"{case}-after"] = bootable(plan.fixed_text, pins, f"{case}-after")
    run = boot_layouts(work, layouts)
    # boot-layouts.sh goes on after a refused layout (rc 4); each test reads
    # its own layout's result and names the refusal (libvirt's error text).
    assert run.rc in (0, 4), run.stderr[-1000:]
    return plans, work


def _booted(work, layout: str):
    """(guest functions, live domain) of a layout that booted to the end."""
    created = work / f"{layout}.create"
    assert (work / f"{layout}.live.xml").exists(), created.read_text() if created.exists() else layout
    console = (work / f"{layout}.console").read_text(errors="replace")
    assert "VFIOADV-END" in console, console[-2000:]
    return guest_functions(console)[0], parse_domain_xml((work / f"{layout}.live.xml").read_bytes())


def _endpoints(seen: dict, live) -> set:
    """Slot paths of the functions the guest saw that are not PCI
    controllers of the domain (the fix may drop a root port it emptied)."""
    bridges = {slot_path(live, c.address.address) for c in live.controllers if c.address is not None}
    return set(seen) - bridges


def _device_paths(live) -> dict:
    """Each hostdev stand-in and emulated device of the live XML -> slot path."""
    return {f"{d.guest.address} <{d.element}>": slot_path(live, d.guest.address)
            for d in live.emulated if d.guest is not None}


@pytest.mark.parametrize("case", sorted([*JOINS, "irqchip", "agent-channel", "join-then-lines"]))
def test_the_fixed_guest_sees_every_function_it_saw_before(booted, case):
    plans, work = booted
    before, live_before = _booted(work, f"{case}-before")
    after, live_after = _booted(work, f"{case}-after")
    # Every device in the XML is enumerated where libvirt put it, before and
    # after: a joined function 1 is scanned only if its slot's function 0
    # is there and says multifunction (Linux drivers/pci/probe.c
    # pci_scan_slot). libvirt 9.0 sets multifunction='on' on function 0 of
    # any slot with several functions itself (domain_addr.c
    # virDomainPCIAddressSetAllMulti), so what this guards is function 0.
    for seen, live in ((before, live_before), (after, live_after)):
        missing = [name for name, path in _device_paths(live).items() if path not in seen]
        assert not missing, (missing, sorted(seen))
    # And no fewer functions than before, chipset conversions aside
    # (i440FX's own 00:01.0/.1/.3 go; Q35's 00:1f.x come with the machine).
    lost = 3 if plans[case].before.domain.chipset != plans[case].after.domain.chipset else 0
    assert len(_endpoints(after, live_after)) >= len(_endpoints(before, live_before)) - lost, (
        sorted(before), sorted(after))


@pytest.mark.parametrize("case", sorted(JOINS))
def test_the_joined_functions_get_the_predicted_lines(booted, case):
    plans, work = booted
    plan = plans[case]
    seen, live = _booted(work, f"{case}-after")
    promised = build_guest_intx_map(parse_domain_xml(plan.fixed_text), plan.before.host_pins())
    cards = sorted((f for f in promised.functions if f.kind == "hostdev"), key=lambda f: f.host_address)
    # The join: one guest slot, functions 0 and 1, pins A and B.
    assert len({(f.guest_address.bus, f.guest_address.slot) for f in cards}) == 1, cards
    assert [(f.guest_address.function, f.pin) for f in cards] == [(0, 1), (1, 2)], cards
    for fn in cards:
        path = slot_path(live, fn.guest_address)
        assert path in seen, f"{fn.host_address} at {fn.guest_address} not seen in the guest"
        pin, irq = seen[path]
        assert (pin, irq) == (fn.pin, fn.irq), (
            f"{fn.host_address} at {fn.guest_address}: guest pin {pin} GSI {irq}, "
            f"guest-irqs predicted pin {fn.pin} GSI {fn.irq}")


def test_the_join_and_the_move_after_it_route_as_predicted(booted):
    """Every function of the fixed layout on the pin and GSI promised; the
    card in one slot, and the audio, which the join alone would have put on
    the card's pin B line, on a line no other function the guest sees uses."""
    plans, work = booted
    plan = plans["join-then-lines"]
    assert [(i.finding.key, i.resolved_by) for i in plan.changes[0].introduces] == [
        (("VA5001", "0000:05:00.1"), "VA5001")]
    cards, seen, live = _routed_as_promised(work, "join-then-lines-after", plan, 5)
    card = [f for f in cards if f.host_address.startswith("0000:08:01.")]
    assert len({(f.guest_address.bus, f.guest_address.slot) for f in card}) == 1, card
    audio = next(f for f in cards if f.host_address == "0000:05:00.1")
    path = slot_path(live, audio.guest_address)
    assert [p for p, (_, irq) in seen.items() if irq == seen[path][1] and p != path] == [], sorted(seen.items())


def _routed_as_promised(work, name: str, plan, count: int):
    """The booted fixed guest `name`: each of the plan's `count` assigned
    functions is seen at its guest address on the pin and IRQ the fixed
    XML's routing promised. Returns (those functions, seen, live)."""
    seen, live = _booted(work, name)
    promised = build_guest_intx_map(parse_domain_xml(plan.fixed_text), plan.before.host_pins())
    cards = [f for f in promised.functions if f.kind == "hostdev"]
    assert len(cards) == count, cards
    for fn in cards:
        path = slot_path(live, fn.guest_address)
        assert path in seen, f"{fn.host_address} at {fn.guest_address} not seen in the guest"
        assert seen[path] == (fn.pin, fn.irq), (fn.host_address, fn.guest_address, seen[path], fn.irq)
    return cards, seen, live


def test_the_full_irqchip_layout_routes_as_predicted(booted):
    # libvirt 9.0 turns <ioapic driver='kvm'/> into -machine kernel_irqchip=on
    # and QEMU 7.2 starts it with -accel tcg: kernel_irqchip is a property of
    # the KVM accelerator (accel/kvm/kvm-all.c kvm_set_kernel_irqchip), which
    # TCG does not have, so the guest gets QEMU's own IOAPIC. This checks that
    # libvirt and QEMU take the fixed layout and route it as predicted; the
    # in-kernel IOAPIC is exercised only where the tier runs under KVM.
    plans, work = booted
    plan = plans["irqchip"]
    assert "<ioapic driver='kvm'/>" in (work / "irqchip-after.live.xml").read_text()
    _routed_as_promised(work, "irqchip-after", plan, 2)


def test_the_agent_channel_is_a_device_the_guest_enumerates(booted):
    """The channel's fix as libvirt's qemu driver defines it: a virtio-serial
    controller at an address libvirt picked, which the guest enumerates
    there (the test above checks it lost nothing else)."""
    _, work = booted
    live_xml = (work / "agent-channel-after.live.xml").read_text()
    assert "org.qemu.guest_agent.0" in live_xml and "<controller type='virtio-serial'" in live_xml
    seen, live = _booted(work, "agent-channel-after")
    _, live_before = _booted(work, "agent-channel-before")

    def serial(dom):
        return [d.guest.address for d in dom.emulated if d.model.startswith("virtio-serial") and d.guest]
    assert serial(live) and not serial(live_before), (serial(live), serial(live_before))
    assert all(slot_path(live, address) in seen for address in serial(live)), (serial(live), sorted(seen))
