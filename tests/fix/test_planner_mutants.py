"""The planner's decisions that no other test pinned down (hand-made mutants of
vfio_advisor/fix/planner.py survived them):

- plan_domain's final filter: a finding an accepted change removed is not
  "unfixed", whatever an earlier planner said of it;
- place_unit's contract: a card it places gets guest lines that no costly
  INTx function uses, and no assigned device outside `before` starts to
  share. Its second check ("makes another assigned device share") cannot
  change a result while the first one holds: guest-line sharing is
  symmetric (GuestIntxMap.sharers), only the unit's functions change lines,
  and every caller passes the devices already in conflict as `before`; the
  random layouts below check the whole contract, so either check going
  wrong shows.

Host devices are the demo host's (examples/demo-host/root, tests/data/fix/
PROVENANCE.md): NEC uPD720101 functions 08:01.1 (OHCI, pin B) and 08:01.2
(EHCI, pin C), INTx only; the SB Live! 08:00.0 (pin A, INTx only).
"""

from __future__ import annotations

import random

from tests.fix.conftest import DATA, HOST_ROOT
from vfio_advisor.facts.domain import parse_tree
from vfio_advisor.fix.planner import Analyzer, Router, _unit_of, place_unit, plan_domain

TWO_INTX = (DATA / "q35-two-intx.xml").read_text()


def hostdev(host: str, guest_slot: int, guest_fn: int, guest_bus: int = 0) -> str:
    dom, bus, rest = host.split(":")
    slot, fn = rest.split(".")
    return (f"<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x{dom}' "
            f"bus='0x{bus}' slot='0x{slot}' function='0x{fn}'/></source><address type='pci' "
            f"domain='0x0000' bus='0x{guest_bus:02x}' slot='0x{guest_slot:02x}' function='0x{guest_fn:x}'/>"
            "</hostdev>")


def nic(model: str, slot: int) -> str:
    return (f"<interface type='network'><source network='default'/><model type='{model}'/>"
            f"<address type='pci' domain='0x0000' bus='0x00' slot='0x{slot:02x}' function='0x0'/></interface>")


def with_devices(*devices: str) -> str:
    """q35-two-intx.xml (Q35, three root ports at 00:02.x, SATA at 00:1f.2,
    a virtio NIC) with its two hostdevs replaced by `devices`."""
    start = TWO_INTX.index("    <hostdev")
    end = TWO_INTX.rindex("</hostdev>") + len("</hostdev>")
    return TWO_INTX[:start] + "\n".join(devices) + TWO_INTX[end:]


def rules(findings) -> set[tuple[str, str | None]]:
    return {(f.rule_id, f.subject) for f in findings}


def test_a_finding_a_later_change_removed_is_not_left_unfixed(analyzer):
    """The NEC's OHCI and EHCI share guest slot 00:0a, at functions 0 and 1,
    without multifunction='on' (VA4002). VA4002's planner cannot regroup
    them (host function 0 is not assigned: manual). VA5001 (the OHCI's GSI 23
    is the e1000's at 00:03) then moves the whole guest slot, and a slot
    moved whole gets multifunction='on' on function 0: VA4002 is gone with
    that change, so it is neither unfixed nor in the way of `complete`."""
    xml = with_devices(hostdev("0000:08:01.1", 0x0A, 0), hostdev("0000:08:01.2", 0x0A, 1),
                       nic("e1000", 0x03))
    plan = plan_domain(analyzer, xml)
    before = rules(plan.before.findings)
    assert {("VA4002", "0000:08:01.1"), ("VA5001", "0000:08:01.1")} <= before
    (change,) = plan.changes
    assert change.rule == "VA5001"
    assert {f.rule_id for f in change.resolves} == {"VA4002", "VA5001"}
    after = rules(Analyzer(str(HOST_ROOT)).analyse(plan.fixed_xml).findings)
    assert not {r for r, _ in after} & {"VA4002", "VA5001"}
    assert plan.unfixed == []
    assert plan.complete
    # The control: asked to fix VA4002 alone, it is manual and stays unfixed.
    only = plan_domain(analyzer, xml, {"VA4002"})
    assert [(u.finding.rule_id, u.kind) for u in only.unfixed] == [("VA4002", "manual")]
    assert "function 0 of 0000:08:01 is not assigned" in only.unfixed[0].reason
    assert not only.complete


# --- place_unit's contract over random layouts -------------------------------

DEVICES = ("0000:08:00.0", "0000:08:01.0", "0000:08:01.1", "0000:08:01.2", "0000:05:00.1",
           "0000:05:00.0", "0000:06:00.0")
MODELS = ("e1000", "rtl8139", "virtio")  # INTx-only emulated NICs, and one on MSI


def random_layout(rnd: random.Random) -> str:
    """Q35 with 2-5 demo devices, each on pcie.0 or behind a root port of its
    own, and 0-4 emulated NICs on pcie.0."""
    ports, body = [], []
    used = {0, 1, 2, 0x1F}  # host bridge, the first free slot kept free, root ports, LPC/SATA
    index = 4  # q35-two-intx.xml has root ports 1-3
    for host in rnd.sample(DEVICES, rnd.randint(2, 5)):
        slot = rnd.choice([s for s in range(3, 31) if s not in used])
        used.add(slot)
        if rnd.random() < 0.5:
            ports.append(f"<controller type='pci' index='{index}' model='pcie-root-port'><address "
                         f"type='pci' domain='0x0000' bus='0x00' slot='0x{slot:02x}' function='0x0'/>"
                         "</controller>")
            body.append(hostdev(host, 0, 0, guest_bus=index))
            index += 1
        else:
            body.append(hostdev(host, slot, 0))
    for _ in range(rnd.randint(0, 4)):
        slot = rnd.choice([s for s in range(3, 31) if s not in used])
        used.add(slot)
        body.append(nic(rnd.choice(MODELS), slot))
    return with_devices(*ports, *body)


def test_place_unit_gives_lines_no_costly_function_uses_and_makes_nobody_share(analyzer):
    """For every card in conflict, placed as plan_va5001 places it (pcie.0
    and behind a new root port): its INTx functions get a line of their
    own, and the devices in conflict afterwards were in conflict before."""
    rnd = random.Random(20261206)
    placed = refused = 0
    for _ in range(40):
        xml = random_layout(rnd)
        analysis = analyzer.analyse(xml)
        root = parse_tree(xml)
        router = Router(analysis)
        gmap = router.gmap(root)
        before = router.conflicted(gmap)
        for bdf in sorted(before):
            unit = _unit_of(gmap, bdf)
            for via_root_port in (False, True):
                result = place_unit(router, root, unit, via_root_port, set(before))
                if result is None:
                    refused += 1
                    continue
                placed += 1
                _, where, tmap = result
                moved = [f for f in tmap.functions if f.host_address in {u.host_address for u in unit}]
                for fn in moved:
                    if router.costly(fn):
                        assert router.costly_sharers(tmap, fn) == [], (xml, bdf, where)
                assert router.conflicted(tmap) <= before, (xml, bdf, where)
    # The sample placed cards, not only refused them.
    assert placed > 20, (placed, refused)
