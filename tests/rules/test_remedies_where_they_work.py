"""Every remedy only where the facts say it can work, on the
lab's real pci=nomsi state: no builder may tell the guest to use MSI there."""

from __future__ import annotations

import pytest

from tests.rules.examples import EXAMPLES
from vfio_advisor.config import DEFAULTS
from vfio_advisor.engine import run_rules
from tests.rules.runtime_examples import DeviceState
from vfio_advisor.rules import RUNTIME
from vfio_advisor.rules.stepping import DeviceSample

GUEST_MSI = ("MSISupported", "modinfo -p", "enable_msi", "Enable MSI in the guest")
EDU = "0000:00:03.0"


@pytest.fixture(scope="module")
def nomsi(tmp_path_factory):
    return EXAMPLES["lab-nomsi"](tmp_path_factory.mktemp("nomsi"))


def _windows(facts):
    return facts._replace(domain=facts.domain._replace(guest_os="windows"))


def test_static_rules_on_nomsi_give_no_guest_msi_remedy(nomsi):
    for facts in (nomsi, _windows(nomsi)):
        found = run_rules(facts)
        assert "VA3001" in [f.rule_id for f in found]
        for f in found:
            for words in GUEST_MSI:
                assert words not in f.remedy, (f.rule_id, words)


def _storm(facts, msi_possible: bool):
    dev = facts.device(EDU)
    sample = DeviceSample(interrupts=dev.interrupts, since_start=120.0, facts=facts, device=dev,
                          host_msi_possible=msi_possible)
    counts = tuple((irq, total - 5 * 30000) for irq, total in dev.interrupts.vector_counts)
    state = DeviceState(EDU, mode="intx", counts=counts, storming=DEFAULTS.storm_samples - 1)
    return RUNTIME.step_device(state, sample, 5.0, DEFAULTS).findings


def test_storm_remedy_says_msi_only_where_the_host_allows_it(nomsi):
    (blocked,) = [f for f in _storm(nomsi, False) if f.rule_id in ("VA6004", "VA6005")]
    assert "Enable MSI in the guest" not in blocked.remedy
    assert "pci=nomsi" in blocked.remedy
    # near miss: the same state on a host that allows MSI may say it
    (allowed,) = [f for f in _storm(nomsi, True) if f.rule_id in ("VA6004", "VA6005")]
    assert "Enable MSI in the guest" in allowed.remedy


def test_va6001_on_nomsi_gives_the_host_remedy(nomsi):
    facts = _windows(nomsi)
    dev = facts.device(EDU)
    sample = DeviceSample(interrupts=dev.interrupts, since_start=120.0, facts=facts, device=dev,
                          host_msi_possible=False)
    counts = tuple((irq, total - 500) for irq, total in dev.interrupts.vector_counts)
    found = RUNTIME.step_device(DeviceState(EDU, mode="intx", counts=counts), sample, 5.0, DEFAULTS).findings
    (va6001,) = [f for f in found if f.rule_id == "VA6001"]
    assert "pci=nomsi" in va6001.remedy and "MSISupported" not in va6001.remedy


def test_va2001_remedy_says_msi_only_where_the_host_allows_it(tmp_path):
    """The shared capture (two edus and virtio0 on IRQ 23): VA2001 may say
    "Enable MSI in the guest"; with pci=nomsi added to its command line (the
    lab's nomsi scenario has no sharer on the line) it must not."""
    import shutil

    from tests.rules.examples import CAPTURES, LAB_XML, lab

    allowed = [f for f in run_rules(lab(CAPTURES / "shared", LAB_XML / "shared.xml"))
               if f.rule_id == "VA2001"]
    assert allowed and all("Enable MSI in the guest" in f.remedy for f in allowed)
    root = tmp_path / "root"
    shutil.copytree(CAPTURES / "shared", root, symlinks=True)
    cmdline = root / "proc/cmdline"
    cmdline.write_text(cmdline.read_text().strip() + " pci=nomsi\n")
    blocked = [f for f in run_rules(lab(root, LAB_XML / "shared.xml")) if f.rule_id == "VA2001"]
    assert blocked
    for f in blocked:
        assert "Enable MSI in the guest" not in f.remedy and "pci=nomsi" in f.remedy


def test_nointxmask_remedy_for_a_nointx_device_says_dropping_it_hides_intx(tmp_path):
    """The X710 cannot mask INTx, so dropping nointxmask=1 does not let it
    share the line; it makes vfio-pci hide its INTx (vfio_pci_nointx), which
    frees the line just the same. Both remedies must say that way out."""
    found = run_rules(EXAMPLES["x710-shared-line-nointxmask"](tmp_path))
    for rule_id in ("VA2002", "VA2004"):
        remedies = [f.remedy for f in found if f.rule_id == rule_id]
        assert remedies, rule_id
        for remedy in remedies:
            assert "without nointxmask=1" in remedy and "vfio_pci_nointx" in remedy, remedy
