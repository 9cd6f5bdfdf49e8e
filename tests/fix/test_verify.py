"""The gate: every check can refuse, and a refused change is never offered."""

from __future__ import annotations

import pytest

from tests.fix.conftest import DATA
from vfio_advisor.fix import planner, verify
from vfio_advisor.fix.planner import Proposal, plan_domain
from vfio_advisor.fix.xmledit import Op


def test_schema_refuses_what_libvirt_refuses():
    good = (DATA / "q35-split-irqchip.xml").read_text()
    assert verify.schema(good).ok
    bad = verify.schema(good.replace("<ioapic driver='qemu'/>", "<ioapic driver='bogus'/>"))
    assert not bad.ok and "features" in bad.detail


def test_testdriver_refuses_intremap_without_split_irqchip():
    xml = (DATA / "q35-split-irqchip-intremap.xml").read_text()
    assert verify.testdriver(xml).ok
    check = verify.testdriver(xml.replace("<ioapic driver='qemu'/>", "<ioapic driver='kvm'/>"))
    assert not check.ok and "split I/O APIC" in check.detail


def test_testdriver_leaves_nothing_defined():
    import libvirt

    xml = (DATA / "q35-split-card.xml").read_text()
    assert verify.testdriver(xml).ok
    conn = libvirt.open("test:///default")
    try:
        assert "split-card" not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def test_testdriver_domain_named_test_does_not_clobber_the_default_one():
    xml = (DATA / "q35-split-card.xml").read_text().replace("<name>split-card<", "<name>test<")
    assert verify.testdriver(xml).ok


def _broken_va4003(root, analysis, targets, router):
    # What a planner bug looks like: a value libvirt does not know.
    return Proposal([Op("ensure-ioapic", value="bogus")], "broken", [], [], list(targets))


def _useless_va4003(root, analysis, targets, router):
    # Valid XML that does not fix anything.
    return Proposal([Op("set-attr", xpath="vcpu", name="placement", value="static")],
                    "useless", [], [], list(targets))


def _harmful_va4003(root, analysis, targets, router):
    # Fixes VA4003 and breaks the card (a new VA4002-style problem is not
    # possible here; put the INTx card on the same line as the NVMe's port).
    return Proposal([Op("ensure-ioapic", value="kvm"),
                     Op("set-address", key=("hostdev", "0000:08:01.0"),
                        address=planner.PciAddress(0, 0, 0x1F, 4))],
                    "harmful", [], [], list(targets))


@pytest.mark.parametrize("bad_planner, failing", [
    (_broken_va4003, {"schema", "testdriver"}),
    (_useless_va4003, {"reanalysis"}),
    (_harmful_va4003, {"reanalysis"}),
])
def test_a_change_failing_a_check_is_not_offered(analyzer, monkeypatch, bad_planner, failing):
    monkeypatch.setitem(planner.PLANNERS, "VA4003", bad_planner)
    plan = plan_domain(analyzer, (DATA / "q35-split-irqchip.xml").read_text())
    assert not plan.changes
    assert plan.fixed_xml == plan.base_xml
    (rejected,) = plan.rejected
    assert {c.name for c in rejected.checks if not c.ok} >= failing
    assert plan.unfixed and all(u.kind == "unverified" for u in plan.unfixed)
    assert not plan.complete


def test_domain_libvirt_already_refuses_is_unverifiable(analyzer):
    xml = (DATA / "q35-split-irqchip.xml").read_text().replace("<vcpu", "<bogus/><vcpu")
    plan = plan_domain(analyzer, xml)
    assert not plan.changes and not plan.rejected
    assert {u.kind for u in plan.unfixed} == {"unverifiable"}
    assert "already fails" in plan.unfixed[0].reason


def test_missing_schema_tool_means_not_offered(analyzer, monkeypatch):
    monkeypatch.setattr(verify, "SCHEMA_TOOL", "virt-xml-validate-not-installed")
    plan = plan_domain(analyzer, (DATA / "q35-split-irqchip.xml").read_text())
    assert not plan.changes
    assert "not installed" in plan.unfixed[0].reason
