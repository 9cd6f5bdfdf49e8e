"""What the daemon's metrics file says beyond counts: posted vectors are
marked unobservable (never 0), and findings stay open exactly while their
condition holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.scenarios import Scenario, intx_rows, msi_rows
from tests.fleet.exposition import parse
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.daemon.state import StateStore
from vfio_advisor.daemon.watch import RuntimeConfig, Watcher
from vfio_advisor.sinks.base import CallbackSink
from vfio_advisor.sinks.metrics import MetricsFileSink
from vfio_advisor.testing.hosttree import capture_under_platform

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
PLATFORMS = REPO / "tests/data/hosts"  # published IOMMU registers and KVM parameters


def series(text: str) -> dict:
    _, samples = parse(text)
    return {(n, tuple(sorted(labels.items()))): v for n, labels, v in samples}


def under_platform(tmp: Path, capture: str, platform: str) -> Path:
    """A lab capture's devices and interrupts under a published platform's
    IOMMU and KVM files."""
    return capture_under_platform(tmp / "root", CAPTURES / capture, PLATFORMS / platform)


@pytest.mark.parametrize("platform,posted", [
    ("posted-intel-xeon-server", True),   # PI on every DMAR unit, APICv on
    ("posted-intel-icl-laptop", False),   # near miss: PI clear
])
def test_posted_msi_is_unobservable_never_zero(tmp_path, platform, posted):
    root = under_platform(tmp_path, "switch-4", platform)  # the edu on vfio-msi, 250 counted
    prom = tmp_path / "m.prom"
    w = Watcher(HostRoot(str(root)), RuntimeConfig(settle=0), [CallbackSink(lambda f, d: None),
                MetricsFileSink(str(prom))], StateStore(None), clock=lambda: 100.0, pci_ids=PciIds(None))
    w.add_domain(parse_domain_xml((REPO / "tests/data/domains/lab/switch.xml").read_bytes()), started_at=0.0)
    w.sample()
    got = series(prom.read_text())
    dev = (("bdf", "0000:00:03.0"), ("domain", "lab-switch"))
    total = ("vfio_advisor_device_interrupts_total", tuple(sorted(dev + (("mode", "msi"),))))
    assert got[("vfio_advisor_device_interrupts_observable", dev)] == (0.0 if posted else 1.0)
    if posted:
        assert total not in got  # no 0, no flat counter
        assert ("vfio_advisor_device_mode", tuple(sorted(dev + (("mode", "msi"),)))) in got
    else:
        assert got[total] == 250.0


def test_va6001_is_open_until_the_device_leaves_intx(tmp_path):
    s = Scenario(tmp_path)
    key = ("vfio_advisor_findings", (("domain", "win11"), ("rule", "VA6001"), ("severity", "warning")))
    count = 0
    for t in range(0, 80, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001"]
    assert series(s.metrics())[key] == 1.0
    s.at(85, intx_rows(count + 3000))  # still on INTx: still open
    assert series(s.metrics())[key] == 1.0
    s.at(90, msi_rows(10))
    s.at(95, msi_rows(500))
    assert "VA6002" in [e["rule"] for e in s.emitted]
    got = series(s.metrics())
    assert key not in got
    assert not [k for k in got if k[0] == "vfio_advisor_findings"]  # VA6002 is an event, never open


def test_a_stopped_domain_closes_its_findings(tmp_path):
    """VA6003 stays open for the whole run (nothing in the run closes it),
    until the domain stops."""
    s = Scenario(tmp_path, state_dir=tmp_path / "state")
    for t in range(0, 80, 5):  # a first run on MSI, recorded in the state file
        s.at(t, msi_rows(100 * (t + 1)))
    s.watcher.add_domain(s.domain, run_id=2)  # the next run stays on INTx
    count = 0
    for t in range(80, 160, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert {"VA6001", "VA6003"} <= {e["rule"] for e in s.emitted}
    rules = {dict(k[1])["rule"] for k in series(s.metrics()) if k[0] == "vfio_advisor_findings"}
    assert rules == {"VA6001", "VA6003"}
    s.watcher.remove_domain("win11")
    s.watcher.sample()
    got = series(s.metrics())
    assert not [k for k in got if k[0] in ("vfio_advisor_findings", "vfio_advisor_device_mode")]


def test_the_open_findings_table_is_the_rules_own():
    """docs/metrics.md's "open until" table is each runtime rule's `holds`
    docstring, in registry order; a rule added or changed changes it."""
    from vfio_advisor.rules import RUNTIME

    doc = (REPO / "docs/metrics.md").read_text()
    table = doc[doc.index("| rule | open until |"):].split("\n\n", 1)[0].splitlines()[2:]
    assert table == [f"| {r.id} {r.slug} | {until} |" for r, until in RUNTIME.open_until()]
    assert len(table) == len([r for r in RUNTIME.by_id.values()])
