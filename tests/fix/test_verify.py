"""The gate: every check can refuse, and a refused change is never offered."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.fix.conftest import DATA, HOST_ROOT, REPO
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
    monkeypatch.setattr(planner, "plan_va4003", bad_planner)
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


def _path_with(tmp_path, *tools) -> str:
    """A real PATH directory holding only `tools` (symlinks to this
    machine's), so that the others are missing as on a host without them."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed here (Debian: libvirt-clients, libxml2-utils)")
        (bindir / tool).symlink_to(found)
    return str(bindir)


@pytest.mark.parametrize("present, named", [
    (("xmllint",), "virt-xml-validate is not installed (Debian package libvirt-clients)"),
    (("virt-xml-validate",), "xmllint, which virt-xml-validate runs, is not installed "
                             "(Debian package libxml2-utils)"),
])
def test_missing_tool_is_named_not_blamed_on_the_domain(analyzer, monkeypatch, tmp_path,
                                                        present, named):
    monkeypatch.setenv("PATH", _path_with(tmp_path, *present))
    plan = plan_domain(analyzer, (DATA / "q35-split-irqchip.xml").read_text())
    assert not plan.changes and plan.unfixed
    for left in plan.unfixed:
        assert left.kind == "unverifiable"
        assert left.reason == f"no change can be verified: {named}"
        assert "domain XML" not in left.reason


def test_a_missing_tool_does_not_hide_what_libvirt_refuses(analyzer, monkeypatch, tmp_path):
    """Schema tool missing, and the test driver (which ran) refuses the XML:
    both are said, neither hides the other."""
    monkeypatch.setenv("PATH", _path_with(tmp_path, "xmllint"))
    xml = (DATA / "q35-split-irqchip.xml").read_text().replace("<vcpu", "<bogus/><vcpu")
    plan = plan_domain(analyzer, xml)
    assert not plan.changes and plan.unfixed
    reason = plan.unfixed[0].reason
    assert reason.startswith("no change can be verified: virt-xml-validate is not installed "
                             "(Debian package libvirt-clients); and the current domain XML already "
                             "fails the libvirt test driver ("), reason
    assert "libvirt schema" not in reason  # that check could not run


def test_fix_command_names_the_missing_tool_in_one_line(tmp_path):
    env = dict(os.environ, PATH=_path_with(tmp_path, "xmllint"))
    out = subprocess.run([sys.executable, "-m", "vfio_advisor.fix", "--xml",
                          str(DATA / "q35-split-irqchip.xml"), "--host-root", str(HOST_ROOT)],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert out.returncode == 1, out.stderr
    (line,) = [ln for ln in out.stdout.splitlines() if "no verified fix for VA4003" in ln]
    assert line.endswith(": no change can be verified: virt-xml-validate is not installed "
                         "(Debian package libvirt-clients)")
    assert "current domain XML" not in out.stdout
