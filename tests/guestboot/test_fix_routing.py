"""The routing tier on a fixed layout: plan `fix` for a domain whose two
INTx-only assigned cards share GSI 22 (tests/data/fix/q35-two-intx.xml, host
facts from the demo host), boot the fixed layout in real QEMU (TCG) through a
real libvirtd, and check that the guest kernel gave each card the line the
fix promised -- two different lines.

Each <hostdev> is booted as a stand-in with the same INTx pin at the same
guest address (tests/guestboot/layouts.py says why that routes as the
cards would). Reuses tests/guestboot's guest (build-guest.sh), boot script
and console parsing. Needs what that tier needs (root, libvirtd, QEMU, Debian's archive
for the first build).
"""

from __future__ import annotations

import pytest

from tests.fix.conftest import DATA, HOST_ROOT
from tests.guestboot.layouts import boot_layouts, bootable, routing_guest_work
from tests.guestboot.test_routing_real_qemu import guest_functions, slot_path
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.guest_intx import build_guest_intx_map
from vfio_advisor.fix.planner import Analyzer, plan_domain

NAME = "fix-routing-two-intx"


@pytest.fixture(scope="module")
def fixed_and_booted(tmp_path_factory):
    work = routing_guest_work(tmp_path_factory, "fixboot")
    analyzer = Analyzer(str(HOST_ROOT))
    plan = plan_domain(analyzer, (DATA / "q35-two-intx.xml").read_text())
    assert [c.rule for c in plan.changes] == ["VA5001"], plan.unfixed
    run = boot_layouts(work, {NAME: bootable(plan.fixed_xml, plan.before.host_pins(), NAME)}, timeout=600)
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
