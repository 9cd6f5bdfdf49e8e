"""VA5001's remedy offers "MSI in the guest" only where the host allows MSI,
as VA2001's does: with pci=nomsi vfio-pci cannot enable MSI (the lab's
nomsi capture, where the edu's MSI enable failed with EINVAL).

The domain: the lab's edu.xml as i440FX (edu on root slot 5, pin A, PIRQA)
plus INTx-only e1000s on root slots 6-9 (PIRQB, C, D, A): every link is in
use, so no guest address gives the edu a line of its own, and the edu shares
IRQ 10 (SeaBIOS: PIRQ A and B) with slots 6 and 9 (intx-routing.md)."""

from __future__ import annotations

import pytest

from tests.rules.examples import CAPTURES, E1000_ON_ROOT_SLOT_3, _edu_on_i440fx, lab
from vfio_advisor.engine import run_rules

EDU = "0000:00:03.0"


@pytest.fixture(scope="module")
def xml(tmp_path_factory):
    nic = "".join(E1000_ON_ROOT_SLOT_3.replace("slot='0x03'", f"slot='0x{slot:02x}'")
                  for slot in (6, 7, 8, 9))
    path = tmp_path_factory.mktemp("va5001") / "edu-i440fx-e1000.xml"
    path.write_text(_edu_on_i440fx().replace("  </devices>", nic + "  </devices>"))
    return path


def _va5001(capture, xml):
    (finding,) = [f for f in run_rules(lab(CAPTURES / capture, xml)) if f.rule_id == "VA5001"]
    assert finding.subject == EDU
    assert "shares IRQ 10 with" in finding.message and "(e1000)" in finding.message
    return finding


def test_nomsi_host_gets_no_guest_msi_remedy(xml):
    finding = _va5001("nomsi-2", xml)
    assert "MSI in the guest" not in finding.remedy
    assert "host forbids it (the host kernel command line has pci=nomsi" in finding.remedy
    assert "Use Q35." in finding.remedy


def test_near_miss_same_edu_host_allows_msi(xml):
    """stays-intx: the same edu kept on INTx by its user, MSI allowed."""
    finding = _va5001("stays-intx-4", xml)
    assert "Use Q35, or MSI in the guest." in finding.remedy
    assert "forbids" not in finding.remedy
