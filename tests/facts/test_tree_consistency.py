"""Every host tree the project ships agrees with itself (facts/consistency.py):
config space live-state bits, msi_irqs/ and the vfio handlers in
/proc/interrupts tell one story. The lab captures are real kernel states, so
they also show the checks hold on what Linux 6.1 really writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vfio_advisor.facts.consistency import tree_inconsistencies
from vfio_advisor.facts.host import HostRoot

REPO = Path(__file__).resolve().parents[2]


def shipped_trees() -> list[Path]:
    trees = [p for p in sorted((REPO / "examples").glob("*/root")) if (p / "sys").is_dir()]
    for base in (REPO / "tests/data/hosts", REPO / "lab/captures"):
        trees += [p for p in sorted(base.iterdir()) if (p / "sys").is_dir()]
    return trees


TREES = shipped_trees()


def test_every_kind_of_tree_is_found():
    names = {str(t.relative_to(REPO)) for t in TREES}
    assert "examples/demo-host/root" in names
    assert sum(n.startswith("lab/captures/") for n in names) >= 20
    assert sum(n.startswith("tests/data/hosts/") for n in names) >= 5


@pytest.mark.parametrize("tree", TREES, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_tree_agrees_with_itself(tree):
    assert tree_inconsistencies(HostRoot(tree)) == []


# --- each check fires on the contradiction it names -----------------------------

AUDIO_CONFIG = "sys/bus/pci/devices/0000:05:00.1/config"
NVME_CONFIG = "sys/bus/pci/devices/0000:06:00.0/config"


@pytest.fixture
def demo(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(REPO / "examples/demo-host/root", root, symlinks=True)
    return root


def _poke(root: Path, rel: str, offset: int, set_bits: int = 0, clear_bits: int = 0) -> None:
    path = (root / rel).resolve()
    data = bytearray(path.read_bytes())
    value = int.from_bytes(data[offset:offset + 2], "little")
    data[offset:offset + 2] = ((value | set_bits) & ~clear_bits).to_bytes(2, "little")
    path.write_bytes(bytes(data))


def test_msi_enable_next_to_vfio_intx_is_named(demo):
    """The demo as shipped before: the audio's MSI Enable as snd_hda_intel
    left it, while /proc/interrupts has it on vfio-intx."""
    _poke(demo, AUDIO_CONFIG, 0xA2, set_bits=0x1)  # MSI control at 0xa0 + 2
    found = tree_inconsistencies(HostRoot(demo))
    assert any(f.startswith("0000:05:00.1: MSI Enable is set") and "on intx" in f for f in found)
    assert any("vfio-intx(0000:05:00.1) is registered while MSI is enabled" in f for f in found)
    assert all(f.startswith("0000:05:00.1: ") for f in found)


def test_vfio_msix_without_msix_enable_is_named(demo):
    _poke(demo, NVME_CONFIG, 0xB2, clear_bits=0x8000)  # MSI-X control at 0xb0 + 2
    found = tree_inconsistencies(HostRoot(demo))
    assert "0000:06:00.0: /proc/interrupts has vfio-msix vectors of it, but MSI-X Enable is " \
           "clear in config space" in found
    assert "0000:06:00.0: msi_irqs/ lists 5 vector(s), but neither MSI nor MSI-X is enabled " \
           "in config space" in found
    assert "0000:06:00.0: msi_irqs/46 says msix, but MSI-X is not enabled in config space" in found


def test_msi_enable_without_msi_irqs_is_named(demo):
    gpu_msi_irqs = (demo / "sys/bus/pci/devices/0000:05:00.0/msi_irqs").resolve()
    for f in gpu_msi_irqs.iterdir():
        f.unlink()
    found = tree_inconsistencies(HostRoot(demo))
    assert found == ["0000:05:00.0: MSI is enabled in config space, but msi_irqs/ is empty"]


def test_vfio_msi_without_msi_enable_is_named(demo):
    _poke(demo, "sys/bus/pci/devices/0000:05:00.0/config", 0xA2, clear_bits=0x1)
    found = tree_inconsistencies(HostRoot(demo))
    assert "0000:05:00.0: /proc/interrupts has vfio-msi vectors of it, but MSI Enable is clear " \
           "in config space" in found
