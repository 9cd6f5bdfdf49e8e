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
- tests/data/fix/q35-pxb-hostdev.xml (VA5003): an INTx card behind a root
  port on a pcie-expander-bus; the fix moves the root port, with the card,
  to pcie.0, where its INTx reaches the guest.

Assigned devices are booted as stand-ins with the same INTx pin at the same
guest address (tests/guestboot/layouts.py). Disks are dropped (no image); everything else is the
layout as planned. All boot in one libvirtd: about 40-60 s under TCG.

Needs what that tier needs (root, libvirtd, QEMU, Debian's archive for the
first guest build).
"""

from __future__ import annotations

import pytest

from tests.fix.conftest import DATA, HOST_ROOT
from tests.guestboot.layouts import boot_layouts, bootable, routing_guest_work
from tests.guestboot.test_routing_real_qemu import guest_functions, slot_path
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.guest_intx import build_guest_intx_map
from vfio_advisor.fix.planner import Analyzer, plan_domain

CASES = {
    "holds-slot": ("adv-q35-hostdev-holds-slot.xml", "VA5001"),
    "sata-lpc": ("adv-i440fx-sata-lpc.xml", "VA4001"),
    "pxb-intx": ("q35-pxb-hostdev.xml", "VA5003"),
}


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    work = routing_guest_work(tmp_path_factory, "fixkinds")
    analyzer = Analyzer(str(HOST_ROOT))
    plans, layouts = {}, {}
    for case, (file, rule) in CASES.items():
        plan = plan_domain(analyzer, (DATA / file).read_text())
        assert plan.changes and plan.changes[0].rule == rule, plan.unfixed
        plans[case] = plan
        pins = plan.before.host_pins()
        layouts[f"{case}-before"] = bootable(plan.source_text, pins, f"{case}-before")
        layouts[f"{case}-after"] = bootable(plan.fixed_text, pins, f"{case}-after")
    run = boot_layouts(work, layouts)
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
