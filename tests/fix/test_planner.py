"""Each fix kind on domains from tests/data/fix, the demo node and the corpus:
the change is planned, verified, and its re-analysis (done again here, with a
fresh analyzer over the same host tree) no longer carries the targeted rule."""

from __future__ import annotations

import re

import pytest

from tests.fix.conftest import CORPUS, DATA, HOST_ROOT, demo_domain, renumbered
from vfio_advisor.facts.guest_intx import build_guest_intx_map
from vfio_advisor.findings import Severity
from vfio_advisor.fix.planner import Analyzer
from vfio_advisor.fix.planner import plan_domain


def reanalyse(xml: str):
    return Analyzer(str(HOST_ROOT)).analyse(xml)


def keys(findings, rule=None):
    return {(f.rule_id, f.subject) for f in findings if rule is None or f.rule_id == rule}


VERIFIED_BY = {"reanalysis", "layout", "schema", "testdriver", "qemudriver"}


def serious(findings):
    return {(f.rule_id, f.subject) for f in findings if f.severity >= Severity.WARNING}


def assert_fixed(plan, rule):
    """The plan carries a verified change for `rule`, and re-analysis of the
    offered XML has no finding of that rule and no new warning or error."""
    assert [c.rule for c in plan.changes].count(rule) == 1, (plan.changes, plan.unfixed)
    change = next(c for c in plan.changes if c.rule == rule)
    assert change.verified and {c.name for c in change.checks} == VERIFIED_BY
    # without a connection the qemu driver check says it did not run
    assert not next(c for c in change.checks if c.name == "qemudriver").ran
    before = plan.before.findings
    after = reanalyse(plan.fixed_xml).findings
    assert keys(before, rule), "the domain had no finding of the rule to start with"
    assert not keys(after, rule)
    assert serious(after) <= serious(before)
    return change


def test_va5001_two_devices_get_two_lines(analyzer):
    xml = (DATA / "q35-two-intx.xml").read_text()
    before = reanalyse(xml)
    va5001 = [f for f in before.findings if f.rule_id == "VA5001"]
    assert {f.subject for f in va5001} == {"0000:08:00.0", "0000:08:01.0"}
    # The prose remedy of VA5001 (rules/routing.py) names one free address per
    # finding, chosen jointly: the two devices go to two slots (it used to send
    # both to 0000:00:01.0; tests/fix/test_remedies.py applies them).
    named = {re.search(r"guest address (\S+)", f.remedy).group(1) for f in va5001}
    assert len(named) == 2, named

    plan = plan_domain(analyzer, xml)
    change = assert_fixed(plan, "VA5001")
    assert {f.subject for f in change.resolves if f.rule_id == "VA5001"} == {"0000:08:00.0", "0000:08:01.0"}
    after = reanalyse(plan.fixed_xml)
    gmap = after.facts.guest_intx
    intx = [f for f in gmap.functions if f.kind == "hostdev" and f.pin]
    lines = [f.irq for f in intx]
    assert len(intx) == 2 and len(set(lines)) == 2, lines
    slots = {(f.root_slot) for f in intx}
    assert len(slots) == 2, "both devices behind the same root-bus slot"
    # Each line is its own: no other INTx function without MSI is on it.
    for fn in intx:
        assert not [s for s in gmap.sharers(fn) if s.kind == "hostdev" or s.model not in ("virtio", "pcie-root-port")]


def test_va5001_new_root_port_is_where_the_model_says(analyzer):
    plan = plan_domain(analyzer, (DATA / "q35-two-intx.xml").read_text())
    (change,) = plan.changes
    adds = [op for op in change.ops if op.kind == "add-pci-controller"]
    assert len(adds) == 1 and adds[0].model == "pcie-root-port"
    # minimal: one card moves, the other stays where it was
    moved = [op.key[1] for op in change.ops if op.kind == "set-address"]
    assert len(moved) == 1
    # The detail promises a GSI; the routing model on the fixed XML agrees.
    promised = int(re.search(r"GSI (\d+)", change.details[0]).group(1))
    after = reanalyse(plan.fixed_xml)
    fn = next(f for f in after.facts.guest_intx.functions if f.host_address == moved[0])
    assert fn.irq == promised


def test_va4002_functions_in_one_slot(analyzer):
    plan = plan_domain(analyzer, (DATA / "q35-split-card.xml").read_text())
    assert_fixed(plan, "VA4002")
    after = reanalyse(plan.fixed_xml)
    guest = {d.address: d.hostdev.guest for d in after.facts.devices}
    gpu, audio = guest["0000:05:00.0"], guest["0000:05:00.1"]
    assert gpu.address[:3] == audio.address[:3]
    assert (gpu.address.function, audio.address.function) == (0, 1)  # host function numbers
    assert gpu.multifunction is True


def test_va4003_ioapic_kvm(analyzer):
    plan = plan_domain(analyzer, (DATA / "q35-split-irqchip.xml").read_text())
    assert_fixed(plan, "VA4003")
    assert reanalyse(plan.fixed_xml).domain.ioapic_driver == "kvm"


def test_va4003_manual_with_intremap(analyzer):
    plan = plan_domain(analyzer, (DATA / "q35-split-irqchip-intremap.xml").read_text())
    assert not plan.changes and not plan.complete
    (left,) = plan.unfixed
    assert left.finding.rule_id == "VA4003" and left.kind == "manual"
    assert "virDomainDefIOMMUValidate" in left.reason
    assert plan.fixed_xml == plan.base_xml


def pxb_e1000() -> str:
    """tests/data/domains/e2e-pxb-pcie.xml: an e1000 behind the expander bus.
    QEMU's e1000 has no MSI (hw/net/e1000.c: INTx only), so VA5003 is right
    for it (an e1000e there has MSI-X and is fine: the pxb-pcie-e1000e near
    miss in tests/rules/examples.py)."""
    xml = (DATA.parent / "domains/e2e-pxb-pcie.xml").read_text()
    assert "<model type='e1000'/>" in xml
    return xml


def pxb_e1000_and_a_second_nic(model: str) -> str:
    """pxb_e1000 plus a NIC of `model` behind a second root port (index 4)
    on the same expander bus, at guest 0000:04:00.0."""
    nic = f"""    <controller type='pci' index='4' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x01' function='0x0'/>
    </controller>
    <interface type='user'>
      <model type='{model}'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </interface>
"""
    return pxb_e1000().replace("    <graphics", nic + "    <graphics", 1)


@pytest.mark.parametrize("xml", [lambda: (DATA / "q35-pxb-hostdev.xml").read_text(), pxb_e1000],
                         ids=["hostdev", "emulated"])
def test_va5003_off_the_expander_bus(analyzer, xml):
    plan = plan_domain(analyzer, xml())
    assert_fixed(plan, "VA5003")
    after = reanalyse(plan.fixed_xml)
    pxb = {c.index for c in after.domain.controllers if c.model == "pcie-expander-bus"}
    ctrls = {c.index: c for c in after.domain.controllers}
    for fn in after.facts.guest_intx.functions:
        if fn.pin and fn.guest_address.bus:
            parent = ctrls[fn.guest_address.bus]
            assert parent.address.address.bus not in pxb and fn.guest_address.bus not in pxb
            assert fn.routed


def test_a_renumbered_controller_takes_its_chassis_along(analyzer):
    """VA5003 empties the expander bus; its index goes to the root port
    that had the highest (tidy_ops). libvirt gives a controller it adds
    later (the USB controller's root port, defining the user's own file) its
    index as chassis: the renumbered port's chassis must follow its index,
    or QEMU refuses the start ("Can't add chassis slot", seen booting the
    fix in tests/guestboot/test_fix_layouts_boot.py). A chassis the user
    chose (not the index) stays."""
    from lxml import etree  # noqa: PLC0415

    def chassis(text: str) -> dict:
        root = etree.fromstring(text.encode())
        return {int(c.get("index")): c.find("target").get("chassis")
                for c in root.iterfind("devices/controller[@type='pci']") if c.find("target") is not None
                and c.find("target").get("chassis") is not None}

    source = (DATA / "q35-pxb-hostdev.xml").read_text()
    plan = plan_domain(analyzer, source)
    assert_fixed(plan, "VA5003")
    assert chassis(source) == {2: "2"} and chassis(plan.fixed_text) == {1: "1"}
    chosen = plan_domain(analyzer, source.replace("chassis='2'", "chassis='7'"))
    assert chassis(chosen.fixed_text) == {1: "7"}


def test_va5003_moves_only_what_it_flagged(analyzer):
    # pxb_e1000 plus an e1000e behind a second root port on the same
    # expander bus: the e1000's port moves to pcie.0, the e1000e (MSI-X,
    # fine behind the pxb-pcie) keeps its place.
    xml = pxb_e1000_and_a_second_nic("e1000e")
    before = reanalyse(xml)
    assert [dict(f.evidence)["guest address"] for f in before.findings
            if f.rule_id == "VA5003"] == ["0000:02:00.0"]  # the e1000 only
    plan = plan_domain(analyzer, xml)
    assert_fixed(plan, "VA5003")
    after = reanalyse(plan.fixed_xml)
    ctrls = {c.index: c for c in after.domain.controllers}
    pxb = {c.index for c in after.domain.controllers if c.model == "pcie-expander-bus"}
    assert ctrls[4].address.address.bus in pxb  # the e1000e's root port stayed
    assert ctrls[2].address.address.bus == 0  # the e1000's went to pcie.0


def test_two_emulated_functions_are_two_findings_to_fix(analyzer):
    """Two INTx-only e1000s behind the expander bus: two VA5003 without a
    host BDF, told apart by their guest addresses (one key before, so the
    re-analysis could not tell which one a change resolved)."""
    from vfio_advisor.fix.verify import describe_finding  # noqa: PLC0415

    xml = pxb_e1000_and_a_second_nic("e1000")
    found = [f for f in reanalyse(xml).findings if f.rule_id == "VA5003"]
    assert sorted(f.guest_address for f in found) == ["0000:02:00.0", "0000:04:00.0"]
    assert all(f.subject is None for f in found)
    assert len({f.key for f in found}) == 2
    assert sorted(describe_finding(f) for f in found) == ["VA5003 guest 0000:02:00.0", "VA5003 guest 0000:04:00.0"]
    plan = plan_domain(analyzer, xml)
    assert_fixed(plan, "VA5003")
    assert not [f for f in reanalyse(plan.fixed_xml).findings if f.rule_id == "VA5003"]


def test_va4001_converted_when_it_can_be(analyzer):
    xml = renumbered(CORPUS / "user-domains/vanities_win10-i440fx.xml")
    plan = plan_domain(analyzer, xml)
    change = assert_fixed(plan, "VA4001")
    after = reanalyse(plan.fixed_xml)
    assert after.domain.chipset == "q35" and after.domain.machine == "pc-q35-3.0"
    assert {c.model for c in after.domain.controllers} >= {"pcie-root", "pcie-root-port"}
    # Planned with lines: the i440FX-only sharing (VA5001, VA5002) is gone too.
    assert not keys(after.findings, "VA5001") and not keys(after.findings, "VA5002")
    assert any("Windows re-detects" in d for d in change.details)


def test_va4001_manual_on_the_demo_oldbox(analyzer):
    plan = plan_domain(analyzer, demo_domain("oldbox"))
    assert not plan.changes and not plan.complete
    reasons = {u.finding.rule_id: u.reason for u in plan.unfixed}
    assert "IDE bus" in reasons["VA4001"] and "INACCESSIBLE_BOOT_DEVICE" in reasons["VA4001"]
    assert "IRQ 10 or 11" in reasons["VA5001"]
    assert [f.rule_id for f in plan.other] == ["VA2003"]  # not a domain XML matter


def test_nothing_to_fix(analyzer):
    plan = plan_domain(analyzer, demo_domain("nvme-linux"))
    assert not plan.changes and not plan.unfixed and plan.complete
    assert plan.diff() == ""


def test_rule_filter(analyzer):
    xml = (DATA / "q35-two-intx.xml").read_text().replace("<apic/>", "<apic/>\n    <ioapic driver='qemu'/>")
    full = plan_domain(analyzer, xml)
    assert [c.rule for c in full.changes] == ["VA5001", "VA4003"]
    only = plan_domain(analyzer, xml, {"VA4003"})
    assert [c.rule for c in only.changes] == ["VA4003"]
    assert keys(reanalyse(only.fixed_xml).findings, "VA5001")  # left alone


def test_fix_for_finding_api(analyzer):
    from vfio_advisor.fix.planner import fix_for_finding

    plan = plan_domain(analyzer, (DATA / "q35-two-intx.xml").read_text())
    by_rule = {}
    for f in plan.before.findings:
        by_rule.setdefault(f.rule_id, []).append(fix_for_finding(plan, f))
    assert all(x["verified"] and x["rule"] == "VA5001" for x in by_rule["VA5001"])
    assert by_rule["VA2003"] == [None]  # no domain XML fix exists for it


def test_comments_and_unrelated_text_survive(analyzer):
    plan = plan_domain(analyzer, (DATA / "q35-split-card.xml").read_text(), rules={"VA4002"})
    source = (DATA / "q35-split-card.xml").read_text()
    assert "As libvirt places a GPU" in plan.fixed_text
    # the diff touches the moved functions' address lines (in the file's own
    # quote style) and the lines of the root port the move left empty
    changed = [l for l in plan.diff().splitlines() if l[:1] in "+-" and l[:3] not in ("+++", "---")]
    removed = [l[1:] for l in changed[:5]]
    assert all(l.startswith("-") for l in changed[:5])
    assert "".join(x + "\n" for x in removed) in source  # the port's lines, as they were
    moved = changed[5:]
    assert len(moved) == 4 and all("<address type='pci'" in l for l in moved), changed
    port = removed
    assert "<controller type='pci' index='3' model='pcie-root-port'>" in port[0]


def test_guest_lines_match_the_routing_model(analyzer):
    plan = plan_domain(analyzer, (DATA / "q35-two-intx.xml").read_text())
    from vfio_advisor.facts.domain import parse_domain_xml

    gmap = build_guest_intx_map(parse_domain_xml(plan.fixed_xml), plan.before.host_pins())
    assert gmap == reanalyse(plan.fixed_xml).facts.guest_intx
