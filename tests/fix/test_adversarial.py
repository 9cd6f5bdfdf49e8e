"""The cases where `fix` used to offer what the qemu driver or the guest
refuses, as named examples (tests/data/fix/adv-*.xml, PROVENANCE.md there).
Each is judged on the offered text: layout (fix/layout.py, checked here
independently of the planner's own check), claims, and the user's bytes.
The qemu driver's verdict on them is tests/fix/test_qemu_sweep.py's."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from lxml import etree

from tests.fix.conftest import DATA, HOST_ROOT
from vfio_advisor.facts.domain import address_of, parse_tree
from vfio_advisor.findings import Severity
from vfio_advisor.fix import verify
from vfio_advisor.fix.layout import new_problems, problems
from vfio_advisor.fix.planner import Analyzer, plan_domain


def offered(plan) -> etree._Element:
    return parse_tree(plan.fixed_text)


def claims_hold(analyzer, plan) -> None:
    """What each change says it resolves is gone from the final XML, and the
    final XML has no finding of warning or worse that the original lacked."""
    after = {f.key for f in analyzer.analyse(plan.fixed_text).findings}
    before = {f.key for f in plan.before.findings}
    for change in plan.changes:
        for f in change.resolves:
            assert f.key not in after, (change.rule, f.key)
    new = [f.key for f in analyzer.analyse(plan.fixed_text).findings
           if f.severity >= Severity.WARNING and f.key not in before]
    assert not new


def test_a_hostdev_at_function_0_takes_its_slot_along(analyzer):
    """An INTx card at 00:02.0 (multifunction) with pcie-root-ports at
    00:02.1-.3, a NIC behind the first: moving the card alone left the root
    ports in a slot without function 0, which the guest never scans."""
    source = (DATA / "adv-q35-hostdev-holds-slot.xml").read_text()
    plan = plan_domain(analyzer, source)
    assert [c.rule for c in plan.changes] == ["VA5001"], plan.unfixed
    root = offered(plan)
    assert not new_problems(parse_tree(source), root)
    assert not [p for p in problems(root) if "no function 0" in p]
    # the card and the three root ports share one slot again, the card at .0
    where = {(el.tag, el.get("index")): address_of(el) for el in root.xpath("devices/*")
             if address_of(el) is not None}
    card = where[("hostdev", None)] if ("hostdev", None) in where else None
    ports = [where[("controller", str(i))] for i in (1, 2, 3)]
    slots = {(a.bus, a.slot) for a in ports}
    assert len(slots) == 1 and sorted(a.function for a in ports) == [1, 2, 3]
    hostdev_fn0 = [address_of(el) for el in root.xpath("devices/hostdev")
                   if (address_of(el).bus, address_of(el).slot) in slots]
    assert [a.function for a in hostdev_fn0] == [0], card
    # the NIC is still behind root port 1
    nic = root.find("devices/interface/address")
    assert nic.get("bus") == "0x01"
    claims_hold(analyzer, plan)


def test_i440fx_to_q35_puts_sata_at_1f2_and_frees_1f0(analyzer):
    """libvirt (qemuDomainValidateDevicePCISlotsQ35) refused the converted
    domain: "Primary SATA controller must have PCI address 0:0:1f.2" and
    "Attempted double use of PCI Address 0000:00:1f.0"."""
    source = (DATA / "adv-i440fx-sata-lpc.xml").read_text()
    plan = plan_domain(analyzer, source)
    assert [c.rule for c in plan.changes][:1] == ["VA4001"], plan.unfixed
    root = offered(plan)
    sata = root.find("devices/controller[@type='sata']")
    assert str(address_of(sata)) == "0000:00:1f.2"
    at_1f = [el.tag for el in root.xpath("devices/*")
             if (a := address_of(el)) is not None and (a.bus, a.slot) == (0, 0x1F)]
    assert at_1f == ["controller"]  # the SATA controller alone
    assert root.find("devices/controller[@type='virtio-serial']") is not None
    assert not new_problems(parse_tree(source), root)
    claims_hold(analyzer, plan)


def test_va4002_after_va4001_leaves_no_empty_root_port(analyzer):
    """A card split over two i440FX slots: the conversion gives each
    function a root port, joining them used to leave one port empty."""
    source = (DATA / "adv-i440fx-split-card.xml").read_text()
    plan = plan_domain(analyzer, source)
    assert [c.rule for c in plan.changes] == ["VA4001", "VA4002"], plan.unfixed
    root = offered(plan)
    used = {address_of(el).bus for el in root.xpath("devices/*") if address_of(el) is not None}
    ports = [int(el.get("index")) for el in root.xpath("devices/controller[@model='pcie-root-port']")]
    assert ports and all(p in used for p in ports), (ports, used)
    assert sorted(ports) == list(range(1, len(ports) + 1))  # no gap for libvirt to fill
    assert not new_problems(parse_tree(source), root)
    claims_hold(analyzer, plan)


@pytest.fixture(scope="module")
def same_pin_host(tmp_path_factory):
    """The demo host with the OHCI card's second function on pin A like its
    first (config space byte 0x3d, Interrupt Pin; PCI Local Bus spec 6.2.4):
    such cards exist, and vfio-pci gives the guest the host's pin."""
    root = tmp_path_factory.mktemp("same-pin") / "root"
    shutil.copytree(HOST_ROOT, root, symlinks=True)
    config = root / "sys/bus/pci/devices/0000:08:01.1/config"
    config = config.resolve() if config.is_symlink() else config
    data = bytearray(config.read_bytes())
    assert data[0x3D] == 2
    data[0x3D] = 1
    config.write_bytes(bytes(data))
    return Analyzer(str(root))


def test_claims_come_from_the_final_xml(same_pin_host):
    """Both functions of one card on pin A: after the conversion each has a
    line of its own; joining them in one slot would share a line again. The
    join is not offered, the leftover names the shared pin, and nothing the
    output claims resolved is in the final XML."""
    source = (DATA / "adv-i440fx-split-card.xml").read_text()
    plan = plan_domain(same_pin_host, source)
    assert [c.rule for c in plan.changes] == ["VA4001"]
    left = {u.finding.rule_id: u.reason for u in plan.unfixed}
    assert "VA4002" in left and "same INTx pin A" in left["VA4002"], left
    assert "no free slot" not in left["VA4002"]
    claims_hold(same_pin_host, plan)
    final = {f.key for f in plan.after.findings}
    assert not any(f.key in final for c in plan.changes for f in c.resolves)


def test_the_users_bytes_stay_and_patch_applies(analyzer, tmp_path):
    """XML declaration, comments outside <domain>, double quotes and
    wrapped tags are the user's; only the changed tags are rewritten."""
    path = DATA / "adv-user-bytes.xml"
    source = path.read_text()
    plan = plan_domain(analyzer, source)
    assert plan.changes
    text = plan.fixed_text
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!-- kept by hand')
    assert text.endswith("</domain>\n<!-- a trailing comment outside <domain> -->\n")
    assert 'slot="0x02" function="0x1"/>' in text  # a wrapped tag nobody moved
    # every line the fix did not touch is the user's, byte for byte
    changed = [l for l in plan.diff().splitlines() if l[:1] in "+-" and l[:3] not in ("+++", "---")]
    assert all("'" not in l for l in changed if l.startswith("+")), changed
    assert len(changed) < 12, changed
    if shutil.which("patch") is None:
        pytest.skip("patch is not installed (Debian package patch)")
    copy = tmp_path / "domain.xml"
    copy.write_text(source)
    run = subprocess.run(["patch", "--quiet", "--batch", str(copy)], input=plan.diff(),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert copy.read_text() == text


def test_schema_errors_of_the_original_do_not_block_a_fix(analyzer):
    """A domain this host's domain.rng refuses (an element libvirt's parser
    ignores) still gets its fix; a change that adds a schema error does not."""
    source = (DATA / "adv-user-bytes.xml").read_text().replace(
        "<vcpu placement=\"static\">2</vcpu>",
        "<vcpu placement=\"static\">2</vcpu>\n  <unknown-to-this-schema/>")
    ran, errors = verify.schema_errors(source)
    if not ran:
        pytest.skip(errors[0])
    assert errors
    plan = plan_domain(analyzer, source)
    assert plan.changes and all(c.verified for c in plan.changes)
    check = next(c for c in plan.changes[0].checks if c.name == "schema")
    assert check.ok and "no new errors" in check.detail
    # A change that adds an error fails. (xmllint reports the first error
    # of an element group only, so an original with errors hides later ones
    # in it: the clean original shows the comparison.)
    clean = (DATA / "adv-user-bytes.xml").read_text()
    worse = clean.replace("<memballoon", "<memballoon bogus=\"1\"")
    assert verify.schema(clean, []).ok
    check = verify.schema(worse, verify.schema_errors(clean)[1])
    assert not check.ok and "new errors" in check.detail and "devices" in check.detail


def test_a_moved_function_drops_multifunction(analyzer):
    """A former function 0 moved to function 1 no longer says
    multifunction='on' (QEMU reads it on function 0 only)."""
    from vfio_advisor.facts.domain import PciAddress
    from vfio_advisor.fix.xmledit import Op, apply_ops

    root = parse_tree((DATA / "adv-q35-hostdev-holds-slot.xml").read_text())
    moved = apply_ops(root, [Op("set-address", key=("hostdev", "0000:08:00.0"),
                                address=PciAddress(0, 0, 9, 1))])
    el = next(h for h in moved.xpath("devices/hostdev") if address_of(h) == PciAddress(0, 0, 9, 1))
    assert el.find("address").get("multifunction") is None
    # and the layout check catches one that stays
    el.find("address").set("multifunction", "on")
    assert [p for p in new_problems(root, moved) if "multifunction='on'" in p]


def test_several_new_controllers_stay_minimal_and_in_order(analyzer):
    """A Q35 conversion adds a root port per card after the same anchor:
    inserted in document order, the text still maps onto the planned tree,
    so the offer stays the user's text (no fallback to re-serialising)."""
    from tests.fix.conftest import CORPUS, renumbered_text

    source = renumbered_text(CORPUS / "user-domains/vanities_win10-i440fx.xml")
    plan = plan_domain(analyzer, source)
    assert [c.rule for c in plan.changes] == ["VA4001"]
    assert plan.minimal
    added = [l for l in plan.diff().splitlines() if l.startswith("+    <controller type='pci' index=")]
    assert added == ["+    <controller type='pci' index='0' model='pcie-root'/>",
                     "+    <controller type='pci' index='1' model='pcie-root-port'>",
                     "+    <controller type='pci' index='2' model='pcie-root-port'>"], added
