"""facts/iommu.py: which group members keep VFIO from opening a group, by
the rules of the kernel the tree ran (driver_managed_dma since 5.19; any
bridge driver before), and what the facts read on real config bytes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.rules.examples import PLX, SBLIVE, _hostdev, _ir_interrupts, _legacy_pci
from vfio_advisor.engine import DeviceCache, gather_domain, gather_host
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.iommu import GroupMember, blocks_viability, release_version
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.rules import RULES_BY_ID
from vfio_advisor.testing.hosttree import Host, build
from vfio_advisor.testing.scenes import domain_xml


@pytest.mark.parametrize("release,version", [
    ("6.1.0-27-amd64", (6, 1)), ("5.18.19-arch1", (5, 18)), ("6.12.12+bpo-amd64", (6, 12)),
    ("5.19", (5, 19)), ("", None), (None, None), ("linux", None), ("6", None),
])
def test_release_version(release, version):
    assert release_version(release) == version


@pytest.mark.parametrize("member,modern,old", [
    (GroupMember("0000:01:00.1", None, False, 0x040300), False, False),            # driverless
    (GroupMember("0000:01:00.1", "vfio-pci", False, 0x040300), False, False),
    (GroupMember("0000:01:00.1", "pci-stub", False, 0x040300), False, False),
    (GroupMember("0000:01:00.1", "snd_hda_intel", False, 0x040300), True, True),   # host driver
    (GroupMember("0000:00:1c.0", "pcieport", True, 0x060400), False, False),
    # shpchp on a conventional bridge: allowed by vfio_dev_driver_allowed
    # (any non-normal header) until 5.18, refused by DMA ownership from 5.19.
    (GroupMember("0000:07:00.0", "shpchp", True, 0x060400), True, False),
])
def test_blocks_viability_by_kernel(member, modern, old):
    assert blocks_viability(member, True) is modern
    assert blocks_viability(member, False) is old


def test_a_bridge_driver_on_an_unknown_kernel_is_not_guessed():
    assert blocks_viability(GroupMember("0000:07:00.0", "shpchp", True, 0x060400), None) is None


def _sblive_behind_shpchp(tmp: Path, release: str | None):
    """The SB Live! behind the PLX PEX8112 PCIe-to-PCI bridge (real config
    dumps, group 38 with the bridge), the bridge bound to shpchp; `release`:
    the tree's proc/sys/kernel/osrelease (None: not recorded)."""
    devices = [replace(d, driver="shpchp") if d.bdf == PLX else d for d in _legacy_pci(sblive_irq=16)]
    root = build(tmp / "root", Host(devices=devices, interrupts=_ir_interrupts({}, gpu=False)))
    if release is not None:
        (root / "proc/sys/kernel").mkdir(parents=True)
        (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
    hr = HostRoot(root)
    xml = domain_xml("oldbox", [_hostdev(SBLIVE, (0x00, 0x05, 0))], os="win7", machine="pc-i440fx-7.2")
    facts = gather_domain(parse_domain_xml(xml), gather_host(hr), DeviceCache(hr, PciIds(None)))
    return facts, list(RULES_BY_ID["VA3005"].check(facts))


def test_bridge_member_read_from_real_config_bytes(tmp_path):
    facts, _ = _sblive_behind_shpchp(tmp_path, "6.1.0-27-amd64")
    group = facts.vfio.group_of(SBLIVE)
    assert group is not None and group.number == 38
    plx = group.member(PLX)
    assert plx.driver == "shpchp" and plx.bridge is True  # header type 1 in the dump
    assert group.member(SBLIVE).bridge is False


def test_shpchp_on_the_bridge_fails_on_6_1_not_on_5_15(tmp_path):
    _, found = _sblive_behind_shpchp(tmp_path / "new", "6.1.0-27-amd64")
    (finding,) = found
    assert f"{PLX} (bound to shpchp)" in finding.message
    _, found = _sblive_behind_shpchp(tmp_path / "old", "5.15.0-91-generic")
    assert found == []
    # no release in the tree: the bridge's driver is not held against it
    _, found = _sblive_behind_shpchp(tmp_path / "unknown", None)
    assert found == []
