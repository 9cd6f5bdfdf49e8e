"""tests/hosttree.py writes trees the tool reads like a live host, from real data."""

from __future__ import annotations

import os
import re

import pytest

from tests.hosttree import (
    CONFIGS,
    Device,
    Host,
    build,
    edit_interrupts,
    irq_row,
    load_capture,
    load_config,
)
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.interrupts import parse_interrupt_row, parse_interrupts
from vfio_advisor.facts.pci import read_pci_device

QD4 = "huananzhi-x99-qd4_navi23_lspci-nnvvvxxxx.txt"


@pytest.mark.parametrize("capture,cpus", [
    ("forum-post_2015-10-24_vfio-msi_8cpu.txt", 8),   # pre-4.3: "IR-PCI-MSI-edge", "IR-IO-APIC  16-fasteoi"
    ("sysstat-tests-root1_9cpu.txt", 9),               # 4.3+: "PCI-MSI 512000-edge"
])
def test_irq_row_reproduces_captured_rows(capture, cpus):
    checked = 0
    for raw in load_capture(capture).splitlines():
        row = parse_interrupt_row(raw.strip(), cpus)
        if row is None or row.number is None:
            continue
        hwirq = int(row.hwirq) if row.hwirq is not None else None
        assert irq_row(row.number, row.counts, row.chip, row.flow, row.handlers, hwirq=hwirq) == raw
        checked += 1
    assert checked > 10


def test_edit_interrupts_replaces_inserts_and_keeps_the_rest():
    text = load_capture("forum-post_2015-10-24_vfio-msi_8cpu.txt")
    new = irq_row(28, [5] + [0] * 7, "IR-IO-APIC", "fasteoi", ["vfio-intx(0000:05:00.1)"], hwirq=4)
    edited = edit_interrupts(text, {28: new, 7: None})
    lines = edited.splitlines()
    assert new in lines
    # between the captured rows 24 and 30
    at = lines.index(new)
    assert lines[at - 1].startswith(" 24:") and lines[at + 1].startswith(" 30:")
    assert not any(l.startswith("  7:") for l in lines)
    kept = [l for l in text.splitlines() if not l.startswith("  7:")]
    assert [l for l in lines if l != new] == kept
    parsed = parse_interrupts(edited)
    assert not parsed.skipped
    assert parsed.by_irq()["28"].vfio[0].bdf == "0000:05:00.1"


def test_tree_reads_back_like_sysfs(tmp_path):
    bridge = Device("0000:00:02.0", load_config(QD4, "00:02.0"), driver="pcieport",
                    iommu_group=28, irq=None, msi_bus="0")
    gpu = Device("0000:01:00.0", load_config(QD4, "05:00.0"), parent="0000:00:02.0",
                 iommu_group=7, irq=45, msi_irqs=(45,))
    build(tmp_path, Host(devices=[bridge, gpu], interrupts="", cmdline="quiet"))
    link = tmp_path / "sys/bus/pci/devices/0000:01:00.0"
    assert os.readlink(link) == "../../../devices/pci0000:00/0000:00:02.0/0000:01:00.0"
    for name in ("driver", "iommu_group"):
        target = os.readlink(link / name)
        assert not os.path.isabs(target) and os.path.exists(link / name)
    dev = read_pci_device(HostRoot(tmp_path), "01:00.0")
    assert (dev.vendor_id, dev.device_id, dev.subsystem_device_id, dev.revision) == (0x1002, 0x73FF, 0x0E36, 0xC3)
    assert dev.class_code == 0x030000 and dev.driver == "vfio-pci"
    assert dev.iommu_group == 7 and dev.iommu_group_members == ("0000:01:00.0",)
    assert dev.irq == 45 and dev.msi_irqs == (45,) and dev.msi_bus is True
    assert dev.upstream == (("0000:00:02.0", False),)
    assert dev.config.length == 4096 and not dev.unreadable
    assert (tmp_path / "sys/bus/pci/devices/0000:01:00.0/vendor").read_text() == "0x1002\n"


def test_missing_parent_is_an_error(tmp_path):
    dev = Device("0000:01:00.0", load_config(QD4, "05:00.0"), parent="0000:00:02.0")
    with pytest.raises(ValueError, match="parent bridge"):
        build(tmp_path, Host(devices=[dev]))


def test_every_config_file_has_provenance():
    provenance = (CONFIGS / "PROVENANCE.md").read_text(encoding="utf-8")
    for path in sorted(CONFIGS.iterdir()):
        if path.name != "PROVENANCE.md":
            assert re.search(rf"`{re.escape(path.name)}`", provenance), path.name
