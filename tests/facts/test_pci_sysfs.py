"""read_pci_device over sysfs-shaped trees built from real config spaces."""

from __future__ import annotations

import os
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

from tests import nobody
from vfio_advisor.testing.hosttree import load_dump
from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts import host as host_module
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pci import (
    BROKEN_INTX_MASKING,
    PciDevice,
    normalize_bdf,
    read_pci_device,
)
from vfio_advisor.facts.pci_config import UNKNOWN
from vfio_advisor.facts.pciids import PciIds

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus" / "pci-config"
H310 = "coreboot-autoport/h310-board_gtx550ti_lspci-nnvvvxxxx.txt"
QD4 = "coreboot-autoport/huananzhi-x99-qd4_navi23_lspci-nnvvvxxxx.txt"
FUJITSU = "pciutils-tests/tree-fujitsu-p8010.txt"
LATITUDE = "coreboot-autoport/latitude-e6430_nvs5200m_lspci-nnvvvxxxx.txt"


@lru_cache(maxsize=None)
def _dump(rel: str) -> dict[str, bytes]:
    return load_dump(CORPUS / rel)


def config_bytes(rel: str, bdf: str) -> bytes:
    return _dump(rel)[bdf]


# An SB Live! (Creative EMU10k1, 1102:0002): conventional PCI, PCI PM 1.0
# (PMC bits 2:0 = 1), INTx Disable clear, no Interrupt Status. Hand-built.
SBLIVE = bytes.fromhex("".join(textwrap.dedent("""\
    02 11 02 00 05 01 90 02 07 00 01 04 00 20 80 00
    01 e0 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    00 00 00 00 00 00 00 00 00 00 00 00 02 11 31 80
    00 00 00 00 dc 00 00 00 00 00 00 00 0b 01 02 14
    """).split())) + bytes(0xDC - 64) + bytes.fromhex("01 00 21 06 00 00 00 00") + bytes(256 - 0xE4)


def add_device(root: Path, chain: list[str], *, config: bytes | None = None,
               attrs: dict[str, str] | None = None, driver: str | None = None,
               group: int | None = None, msi_bus: str | None = "1",
               msi_irqs: tuple[int, ...] = ()) -> Path:
    """Create sys/devices/pci0000:00/<chain...> and the sys/bus/pci/devices link.

    Links are relative, as the kernel makes them, so they resolve inside root.
    """
    domain = chain[-1][:4]
    bus = chain[0][5:7]
    devdir = root / "sys" / "devices" / f"pci{domain}:{bus}" / Path(*chain)
    devdir.mkdir(parents=True, exist_ok=True)
    depth = len(chain) + 1  # pci0000:00 + chain, below sys/devices
    if config is not None:
        (devdir / "config").write_bytes(config)
    for name, value in (attrs or {}).items():
        (devdir / name).write_text(value + "\n")
    if msi_bus is not None:
        (devdir / "msi_bus").write_text(msi_bus + "\n")
    if driver is not None:
        (root / "sys/bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
        os.symlink("../" * (depth + 1) + f"bus/pci/drivers/{driver}", devdir / "driver")
    if group is not None:
        gdir = root / "sys/kernel/iommu_groups" / str(group) / "devices"
        gdir.mkdir(parents=True, exist_ok=True)
        os.symlink("../" * (depth + 1) + f"kernel/iommu_groups/{group}", devdir / "iommu_group")
        os.symlink("../../../../devices/" + f"pci{domain}:{bus}/" + "/".join(chain), gdir / chain[-1])
    if msi_irqs:
        (devdir / "msi_irqs").mkdir()
        for irq in msi_irqs:
            (devdir / "msi_irqs" / str(irq)).write_text("msi\n")
    link = root / "sys/bus/pci/devices" / chain[-1]
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("../../../devices/" + f"pci{domain}:{bus}/" + "/".join(chain), link)
    return devdir


def attrs_from_config(data: bytes, irq: int) -> dict[str, str]:
    """The sysfs attribute files the kernel derives from the config header."""
    u16 = lambda off: int.from_bytes(data[off:off + 2], "little")  # noqa: E731
    return {
        "vendor": f"0x{u16(0):04x}", "device": f"0x{u16(2):04x}",
        "subsystem_vendor": f"0x{u16(0x2C):04x}", "subsystem_device": f"0x{u16(0x2E):04x}",
        "revision": f"0x{data[8]:02x}", "class": f"0x{int.from_bytes(data[9:12], 'little'):06x}",
        "irq": str(irq),
    }


@pytest.fixture
def h310(tmp_path) -> HostRoot:
    """GTX 550 Ti + HDMI audio on vfio-pci behind root port 00:01.0."""
    port = config_bytes(H310, "0000:00:01.0")
    add_device(tmp_path, ["0000:00:01.0"], config=port, driver="pcieport", group=1)
    gpu = config_bytes(H310, "0000:01:00.0")
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=gpu,
               attrs=attrs_from_config(gpu, 126), driver="vfio-pci", group=1,
               msi_irqs=(131, 130))
    audio = config_bytes(H310, "0000:01:00.1")
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.1"], config=audio,
               attrs=attrs_from_config(audio, 17), driver="vfio-pci", group=1)
    return HostRoot(tmp_path)


def test_sysfs_links_are_relative(h310):
    link = Path(h310.root) / "sys/bus/pci/devices/0000:01:00.0"
    assert os.readlink(link) == "../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0"
    assert os.readlink(link / "driver") == "../../../../bus/pci/drivers/vfio-pci"
    assert os.readlink(link / "iommu_group") == "../../../../kernel/iommu_groups/1"
    assert (link / "driver").resolve() == (Path(h310.root) / "sys/bus/pci/drivers/vfio-pci").resolve()
    assert (link / "iommu_group").resolve() == (Path(h310.root) / "sys/kernel/iommu_groups/1").resolve()


def test_read_gpu_on_vfio_pci(h310):
    dev = read_pci_device(h310, "01:00.0")
    assert dev.address == "0000:01:00.0"
    assert (dev.vendor_id, dev.device_id, dev.revision) == (0x10DE, 0x1244, 0xA1)
    assert (dev.subsystem_vendor_id, dev.subsystem_device_id) == (0x1462, 0x809D)
    assert dev.class_code == 0x030000 and dev.is_display and not dev.is_hda_audio
    assert dev.driver == "vfio-pci"
    assert dev.iommu_group == 1
    assert dev.iommu_group_members == ("0000:00:01.0", "0000:01:00.0", "0000:01:00.1")
    assert dev.irq == 126
    assert dev.msi_bus is True
    assert dev.upstream == (("0000:00:01.0", True),)
    assert dev.msi_irqs == (130, 131)
    assert dev.unreadable == ()
    assert dev.config.msi.enabled and dev.config_bytes == 4096
    assert dev.supports_msi is True and dev.intx_pin == "A"
    assert (dev.slot, dev.function) == ("0000:01:00", 0)
    assert dev.name == "[10de:1244]"


def test_read_hdmi_audio(h310):
    dev = read_pci_device(h310, "0000:01:00.1")
    assert dev.is_hda_audio and not dev.is_display
    assert dev.function == 1 and dev.slot == "0000:01:00"
    assert dev.irq == 17 and dev.msi_irqs == ()
    assert dev.intx_pin == "B"


def test_hardware_id_format(h310):
    gpu = read_pci_device(h310, "0000:01:00.0")
    # SUBSYS is subsystem device id, then subsystem vendor id
    assert gpu.hardware_id == "PCI\\VEN_10DE&DEV_1244&SUBSYS_809D1462&REV_A1"
    gtx1080 = gpu._replace(device_id=0x1B80, subsystem_vendor_id=0x1458,
                                  subsystem_device_id=0x3702, revision=0xA1)
    assert gtx1080.hardware_id == "PCI\\VEN_10DE&DEV_1B80&SUBSYS_37021458&REV_A1"
    assert gpu._replace(subsystem_vendor_id=None).hardware_id is None
    assert gpu._replace(revision=None).hardware_id is None


def test_missing_device_raises(h310):
    with pytest.raises(FactUnavailable) as info:
        read_pci_device(h310, "0000:05:00.0")
    assert info.value.path == "sys/bus/pci/devices/0000:05:00.0"
    assert "no such PCI device" in info.value.reason


def test_bad_address_raises_value_error(h310):
    with pytest.raises(ValueError):
        read_pci_device(h310, "01:00")


def test_upstream_bridges_with_msi_bus(tmp_path):
    # qd4: root port 00:02.0 -> Navi switch upstream 03:00.0 -> downstream 04:00.0 -> GPU 05:00.0
    chain = ["0000:00:02.0", "0000:03:00.0", "0000:04:00.0", "0000:05:00.0"]
    add_device(tmp_path, chain[:1], config=config_bytes(QD4, chain[0]), msi_bus="1")
    add_device(tmp_path, chain[:2], config=config_bytes(QD4, chain[1]), msi_bus="0")
    add_device(tmp_path, chain[:3], config=config_bytes(QD4, chain[2]), msi_bus=None)
    add_device(tmp_path, chain, config=config_bytes(QD4, chain[3]), driver="vfio-pci", group=5)
    dev = read_pci_device(HostRoot(tmp_path), "05:00.0")
    assert dev.upstream == (("0000:04:00.0", None), ("0000:03:00.0", False), ("0000:00:02.0", True))
    assert dev.msi_bus is True
    # No attribute files in this recording: the ids come from the config header.
    assert (dev.vendor_id, dev.device_id, dev.revision) == (0x1002, 0x73FF, 0xC3)
    assert dev.subsystem_device_id == 0x0E36
    assert any(u.startswith("vendor: ") for u in dev.unreadable)
    port = read_pci_device(HostRoot(tmp_path), "0000:04:00.0")
    assert port.msi_bus is None and "msi_bus: missing" in port.unreadable
    assert port.config.pcie.port_type == "downstream-port"
    assert port.upstream == (("0000:03:00.0", False), ("0000:00:02.0", True))


def test_config_of_64_bytes_recorded_in_unreadable(tmp_path):
    gpu = config_bytes(H310, "0000:01:00.0")
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=gpu[:64],
               attrs=attrs_from_config(gpu, 126), group=1)
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert dev.config.truncated and dev.config_bytes == 64
    assert ("config: only 64 of 256 bytes readable (not root, or no CAP_SYS_ADMIN); "
            "capabilities not checked") in dev.unreadable
    assert dev.supports_msi is UNKNOWN
    assert dev.config.pcie is UNKNOWN
    assert dev.intx_pin == "A"
    assert dev.hardware_id == "PCI\\VEN_10DE&DEV_1244&SUBSYS_809D1462&REV_A1"


def test_config_too_short_to_decode(tmp_path):
    gpu = config_bytes(H310, "0000:01:00.0")
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=gpu[:10],
               attrs=attrs_from_config(gpu, 126))
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert dev.config is None
    # One fact, naming damage: no sysfs read gives fewer than 64 bytes.
    assert [u for u in dev.unreadable if "config" in u] == [
        "capabilities unreadable: config space truncated at 10 bytes"]
    assert dev.capabilities_unreadable == "config space truncated at 10 bytes"
    assert dev.capabilities_damaged
    assert dev.vendor_id == 0x10DE  # from the attribute file
    assert dev.supports_msi is UNKNOWN and dev.intx_pin is UNKNOWN
    assert dev.intx_masking().supported is None


@pytest.mark.parametrize("length", [0, 10, 40, 106, 255])
def test_damaged_config_is_one_capabilities_unreadable_fact(tmp_path, length):
    gpu = config_bytes(H310, "0000:01:00.0")
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=gpu[:length],
               attrs=attrs_from_config(gpu, 126), group=1)
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    about_config = [u for u in dev.unreadable if "config" in u or "capabilit" in u]
    assert about_config == [f"capabilities unreadable: config space truncated at {length} bytes"]
    assert dev.capabilities_damaged
    assert dev.supports_msi is UNKNOWN
    # Root would read the same bytes: nothing here may say "run as root".
    assert not any("root" in u or "CAP_SYS_ADMIN" in u for u in dev.unreadable)


def test_looping_capability_list_is_named(tmp_path):
    gpu = bytearray(config_bytes(H310, "0000:01:00.0"))
    first = gpu[0x34]
    gpu[first + 1] = first  # the first capability points at itself
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=bytes(gpu),
               attrs=attrs_from_config(bytes(gpu), 126), group=1)
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert f"capabilities unreadable: capability list loops at {first:#04x}" in dev.unreadable
    assert dev.supports_msi is UNKNOWN and dev.capabilities_damaged
    assert dev.intx_masking().supported in (True, None)  # never False from a partial list


def test_unprivileged_read_is_not_damage(tmp_path):
    gpu = config_bytes(H310, "0000:01:00.0")
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=gpu[:64],
               attrs=attrs_from_config(gpu, 126), group=1)
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert not dev.capabilities_damaged
    assert dev.capabilities_unreadable.startswith("only the first 64 bytes")


def test_config_file_missing(tmp_path):
    gpu = config_bytes(H310, "0000:01:00.0")
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=None,
               attrs=attrs_from_config(gpu, 126), group=1)
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert dev.config is None and dev.config_bytes == 0
    assert "config: missing" in dev.unreadable
    assert dev.device_id == 0x1244


def test_config_unreadable_directory(tmp_path):
    gpu = config_bytes(H310, "0000:01:00.0")
    devdir = add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], attrs=attrs_from_config(gpu, 126))
    (devdir / "config").mkdir()  # open() fails with EISDIR
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert dev.config is None
    assert [u for u in dev.unreadable if u.startswith("config: ")] == ["config: Is a directory"]


# --- permissions, as a real unprivileged user (tests/nobody.py) ----------------

# Run as nobody: read_pci_device(HostRoot(argv[1]), argv[2]), the fields these tests need.
PCI_DEVICE_AS_JSON = """
import json, sys
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pci import read_pci_device
dev = read_pci_device(HostRoot(sys.argv[1]), sys.argv[2])
print(json.dumps({"config_bytes": dev.config_bytes, "unreadable": list(dev.unreadable),
                  "vendor_id": dev.vendor_id, "iommu_group": dev.iommu_group,
                  "supports_msi": repr(dev.supports_msi)}))
"""


def test_config_mode_000_as_nobody():
    nobody.require()
    gpu = config_bytes(H310, "0000:01:00.0")
    with nobody.tree() as root:
        devdir = add_device(root, ["0000:00:01.0", "0000:01:00.0"], config=gpu,
                            attrs=attrs_from_config(gpu, 126), group=1)
        # Control: nobody reads this recorded config (a plain file) whole.
        dev = nobody.python_json(PCI_DEVICE_AS_JSON, str(root), "0000:01:00.0")
        assert dev["config_bytes"] == len(gpu) and dev["unreadable"] == []
        (devdir / "config").chmod(0)
        dev = nobody.python_json(PCI_DEVICE_AS_JSON, str(root), "0000:01:00.0")
    assert dev["config_bytes"] == 0
    assert dev["unreadable"] == ["config: permission denied (run as root for full facts)"]
    assert dev["vendor_id"] == 0x10DE and dev["iommu_group"] == 1  # the sysfs attributes still read
    assert dev["supports_msi"] == repr(UNKNOWN)


def _real_devices() -> list[str]:
    """This machine's PCI functions with a type 0 or 1 header: the kernel gives an
    unprivileged reader 128 bytes of a CardBus bridge's config, 64 of the others."""
    found = []
    for path in sorted(Path("/sys/bus/pci/devices").glob("*")):
        try:
            with open(path / "config", "rb") as f:
                header = f.read(15)
        except OSError:
            continue
        if len(header) == 15 and header[14] & 0x7F != 2:
            found.append(path.name)
    return found


def test_real_config_space_read_by_nobody_is_64_bytes():
    """A real kernel behaviour, not a recording: drivers/pci/pci-sysfs.c
    pci_read_config() (Linux 6.1) serves the whole config space only to an
    opener with CAP_SYS_ADMIN, and its first 64 bytes to anyone else. The
    product must then say the capabilities were not checked (VA8002's input)
    rather than report a device without MSI."""
    if os.geteuid() != 0:
        pytest.skip("needs root for the full read it compares with")
    devices = _real_devices()
    if not devices:
        pytest.skip("this machine has no PCI devices in /sys/bus/pci/devices")
    nobody.require()
    for bdf in devices:
        full = read_pci_device(HostRoot("/"), bdf)
        assert full.config_bytes >= 256, bdf
        assert not [u for u in full.unreadable if u.startswith("config")], (bdf, full.unreadable)
        dev = nobody.python_json(PCI_DEVICE_AS_JSON, "/", bdf)
        assert dev["config_bytes"] == 64, (bdf, dev)
        assert ("config: only 64 of 256 bytes readable (not root, or no CAP_SYS_ADMIN); "
                "capabilities not checked") in dev["unreadable"], (bdf, dev)
        # With a capability list (Status bit 4) the MSI answer needs bytes past
        # 64: unknown, never "no MSI". Without one, the 64-byte header is enough.
        expected = repr(UNKNOWN) if full.config.has_capability_list else repr(full.supports_msi)
        assert dev["supports_msi"] == expected, (bdf, dev)
        assert dev["vendor_id"] == full.vendor_id  # the header is in the 64 bytes
    if not any(read_pci_device(HostRoot("/"), bdf).config.has_capability_list for bdf in devices):
        pytest.skip("no PCI device here has a capability list: the unknown-MSI branch did not run")


def test_missing_links_and_bad_attributes(tmp_path):
    gpu = config_bytes(H310, "0000:01:00.0")
    attrs = attrs_from_config(gpu, 126)
    attrs.update(vendor="garbage", irq="n/a")
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=gpu, attrs=attrs, msi_bus="0")
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert dev.driver is None  # no driver bound: not a read error
    assert not any(u.startswith("driver") for u in dev.unreadable)
    # No iommu_group link: the host has no IOMMU. A fact, not a read failure.
    assert dev.iommu_group is None and dev.iommu_group_members == ()
    assert not any(u.startswith("iommu_group") for u in dev.unreadable)
    assert "vendor: not a number: 'garbage'" in dev.unreadable
    assert dev.vendor_id == 0x10DE  # fell back on the config header
    assert dev.irq is None
    assert dev.msi_bus is False


def test_unreadable_iommu_group_link_is_recorded(tmp_path, monkeypatch):
    gpu = config_bytes(H310, "0000:01:00.0")
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=gpu, group=1)
    real_readlink = os.readlink

    def deny(path, *args, **kwargs):
        if str(path).endswith("iommu_group"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_readlink(path, *args, **kwargs)

    monkeypatch.setattr(host_module.os, "readlink", deny)
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert dev.iommu_group is None
    assert "iommu_group: permission denied (run as root for full facts)" in dev.unreadable


def test_non_numeric_iommu_group(tmp_path):
    gpu = config_bytes(H310, "0000:01:00.0")
    devdir = add_device(tmp_path, ["0000:00:01.0", "0000:01:00.0"], config=gpu)
    (tmp_path / "sys/kernel/iommu_groups/abc").mkdir(parents=True)
    os.symlink("../../../../kernel/iommu_groups/abc", devdir / "iommu_group")
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert dev.iommu_group is None and "iommu_group: not a number" in dev.unreadable


def test_conventional_device_behind_pci_bridge(tmp_path):
    # fujitsu: 3Com wireless 1d:00.0 behind the ICH8 PCI bridge 00:1e.0
    add_device(tmp_path, ["0000:00:1e.0"], config=config_bytes(FUJITSU, "0000:00:1e.0"))
    cfg = config_bytes(FUJITSU, "0000:1d:00.0")
    add_device(tmp_path, ["0000:00:1e.0", "0000:1d:00.0"], config=cfg, attrs=attrs_from_config(cfg, 16))
    dev = read_pci_device(HostRoot(tmp_path), "0000:1d:00.0")
    assert (dev.vendor_id, dev.device_id) == (0x10B7, 0x6001)
    assert dev.config.pcie is None and dev.config.pm.version == 1
    assert dev.upstream == (("0000:00:1e.0", True),)
    # Status has Interrupt Status set (0x0298): a PCI 2.3 feature, so masking works.
    masking = dev.intx_masking()
    assert masking.supported is True and "Interrupt Status" in masking.evidence


# --- INTx masking evidence ------------------------------------------------------

def test_intx_masking_evidence(h310):
    gpu = read_pci_device(h310, "0000:01:00.0")  # DisINTx+ in the capture
    m = gpu.intx_masking()
    assert m.supported is True and "INTx Disable set" in m.evidence
    audio = read_pci_device(h310, "0000:01:00.1")  # DisINTx-, INTx-, PCIe endpoint
    m = audio.intx_masking()
    assert m.supported is True and "PCI Express" in m.evidence


def test_intx_masking_nointxmask(h310):
    m = read_pci_device(h310, "0000:01:00.1").intx_masking(nointxmask=True)
    assert m.supported is False and "nointxmask" in m.evidence


def test_intx_masking_kernel_quirk_list(h310):
    audio = read_pci_device(h310, "0000:01:00.1")
    assert (0x10EC, 0x8169) in BROKEN_INTX_MASKING and (0x8086, 0x1572) in BROKEN_INTX_MASKING
    for vendor, device in [(0x10EC, 0x8169), (0x8086, 0x1572), (0x1814, 0x0601)]:
        quirky = audio._replace(vendor_id=vendor, device_id=device)
        m = quirky.intx_masking()
        assert m.supported is False and "quirk_broken_intx_masking" in m.evidence
    # The RTL8168 next to it (10ec:8168) is not on the list.
    assert audio._replace(vendor_id=0x10EC, device_id=0x8168).intx_masking().supported


def test_intx_masking_sb_live_pm_1_0(tmp_path):
    add_device(tmp_path, ["0000:00:1e.0"], config=config_bytes(FUJITSU, "0000:00:1e.0"))
    add_device(tmp_path, ["0000:00:1e.0", "0000:05:00.0"], config=SBLIVE,
               attrs=attrs_from_config(SBLIVE, 20), driver="vfio-pci", group=7)
    dev = read_pci_device(HostRoot(tmp_path), "05:00.0")
    assert (dev.vendor_id, dev.device_id, dev.subsystem_device_id) == (0x1102, 0x0002, 0x8031)
    assert dev.config.pm.offset == 0xDC and dev.config.pm.version == 1
    assert dev.config.pcie is None and dev.supports_msi is False
    # PCI PM 1.0 hints at a design older than PCI 2.3, but the kernel probes
    # Command bit 10 (drivers/pci/probe.c pci_intx_mask_broken, Linux 6.1),
    # not the PM version: a hint, never a firm False.
    m = dev.intx_masking()
    assert m.supported is None
    assert "PCI PM 1.0" in m.evidence and "likely older than PCI 2.3" in m.evidence


def test_pci_pm_1_0_with_pci_2_3_masking_exists():
    """Why PM 1.0 cannot prove a lack of masking: a real PM 1.0 device with
    PCI 2.3's Interrupt Status bit (the 3Com [10b7:6001] of pciutils'
    tree-fujitsu-p8010, also read in test_conventional_device_behind_pci_bridge)."""
    from vfio_advisor.facts.pci_config import parse_config_space
    cs = parse_config_space(config_bytes(FUJITSU, "0000:1d:00.0"))
    assert cs.pm.version == 1 and cs.pcie is None
    assert cs.interrupt_status  # Status bit 3, defined by PCI 2.3


def test_intx_masking_conventional_without_evidence(tmp_path):
    ehci = config_bytes(QD4, "0000:00:1a.0")  # PM 1.1 (version 2), DisINTx-, INTx-
    add_device(tmp_path, ["0000:00:1a.0"], config=ehci)
    m = read_pci_device(HostRoot(tmp_path), "00:1a.0").intx_masking()
    assert m.supported is None and "conventional PCI" in m.evidence


def test_intx_masking_all_ones_header_is_not_evidence(tmp_path):
    add_device(tmp_path, ["0000:00:01.0", "0000:01:00.1"], config=config_bytes(LATITUDE, "0000:01:00.1"))
    dev = read_pci_device(HostRoot(tmp_path), "0000:01:00.1")
    assert dev.config is None
    assert any("all ones" in u for u in dev.unreadable), dev.unreadable
    assert dev.intx_masking().supported is not True


# --- normalize_bdf -------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1:00.0", "0000:01:00.0"),
    ("01:00.0", "0000:01:00.0"),
    ("0000:01:00.0", "0000:01:00.0"),
    ("0000:0A:1F.7", "0000:0a:1f.7"),
    ("  01:00.1\n", "0000:01:00.1"),
    ("1:2:3.4", "0001:02:03.4"),
    ("55aa:20:0f.3", "55aa:20:0f.3"),
])
def test_normalize_bdf(text, expected):
    assert normalize_bdf(text) == expected


@pytest.mark.parametrize("text", [
    "", "01:00", "01:00.8", "01:20.0", "zz:00.0", "00001:01:00.0", "0000:001:00.0",
    "0000:01:00.0.0", "pci_0000_01_00_0",
])
def test_normalize_bdf_rejects(text):
    with pytest.raises(ValueError):
        normalize_bdf(text)


# --- pci.ids --------------------------------------------------------------------

PCI_IDS = textwrap.dedent("""\
    # pci.ids excerpt
    1002  Advanced Micro Devices, Inc. [AMD/ATI]
    \t73ff  Navi 23 [Radeon RX 6600/6600 XT/6600M]
    \tab28  Navi 21/23 HDMI/DP Audio Controller
    10de  NVIDIA Corporation
    \t0bee  GF116 High Definition Audio Controller
    \t\t1462 809d  GF116 High Definition Audio Controller
    # a comment inside the block
    \t1244  GF116 [GeForce GTX 550 Ti]
    \t\t1462 809d  N550GTX-Ti
    10df  Emulex Corporation
    \t1244  Not the NVIDIA one
    """)


def test_pci_ids_lookup():
    ids = PciIds(PCI_IDS)
    assert ids.lookup(0x10DE, 0x1244) == ("NVIDIA Corporation", "GF116 [GeForce GTX 550 Ti]")
    assert ids.lookup(0x1002, 0xAB28) == ("Advanced Micro Devices, Inc. [AMD/ATI]",
                                          "Navi 21/23 HDMI/DP Audio Controller")
    assert ids.lookup(0x10DE, 0x809D) == ("NVIDIA Corporation", None)  # a subsystem line, not a device
    assert ids.lookup(0x10DE, 0xFFFF) == ("NVIDIA Corporation", None)
    assert ids.lookup(0x10DF, 0x1244) == ("Emulex Corporation", "Not the NVIDIA one")
    assert ids.lookup(0x1234, 0x0001) == (None, None)
    assert PciIds(None).lookup(0x10DE, 0x1244) == (None, None)


def test_pci_ids_loaded_from_host_root(h310, tmp_path):
    (tmp_path / "usr/share/misc").mkdir(parents=True)
    (tmp_path / "usr/share/misc/pci.ids").write_text(PCI_IDS)
    ids = PciIds.load(h310)
    dev = read_pci_device(h310, "0000:01:00.0", ids)
    assert (dev.vendor_name, dev.device_name) == ("NVIDIA Corporation", "GF116 [GeForce GTX 550 Ti]")
    assert dev.name == "NVIDIA Corporation GF116 [GeForce GTX 550 Ti]"
    assert PciIds.load(HostRoot(tmp_path / "nowhere")).lookup(0x10DE, 0x1244) == (None, None)


def test_pci_device_name_fallbacks():
    dev = PciDevice(address="0000:01:00.0", vendor_id=None, device_id=None, subsystem_vendor_id=None,
                    subsystem_device_id=None, revision=None, class_code=None, driver=None,
                    iommu_group=None, iommu_group_members=(), irq=None, msi_bus=None, upstream=(),
                    msi_irqs=(), vendor_name=None, device_name=None, config=None)
    assert dev.name == "unknown device"
    assert dev.hardware_id is None and dev.base_class is None
    assert not dev.is_display and not dev.is_hda_audio
    assert dev.supports_msi is UNKNOWN and dev.config_bytes == 0
    m = dev.intx_masking()
    assert m.supported is None and "unreadable" in m.evidence
