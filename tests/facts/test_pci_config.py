"""Config-space decoding: every corpus dump, known devices, truncation, bad lists."""

from __future__ import annotations

import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

from vfio_advisor.testing.hosttree import load_dump
from vfio_advisor.facts.pci_config import (
    UNKNOWN,
    ConfigSpace,
    ConfigSpaceError,
    parse_config_space,
    parse_lspci_dump,
)

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"
DUMPS = CORPUS / "pci-config"
VIRPCI = CORPUS / "libvirt-tests" / "virpcitestdata-v4.0.0"

ALL_DUMPS = sorted(DUMPS.glob("*/*.txt"))
H310 = "coreboot-autoport/h310-board_gtx550ti_lspci-nnvvvxxxx.txt"
QD4 = "coreboot-autoport/huananzhi-x99-qd4_navi23_lspci-nnvvvxxxx.txt"
BD4 = "coreboot-autoport/huananzhi-x99-bd4_lspci-nnvvvxxxx.txt"
M11X = "coreboot-autoport/alienware-m11x_gt335m_lspci-nnvvvxxxx.txt"
ACER = "coreboot-autoport/acer_lspci-nnvvvxxxx.txt"
LATITUDE = "coreboot-autoport/latitude-e6430_nvs5200m_lspci-nnvvvxxxx.txt"


@lru_cache(maxsize=None)
def dump(rel: str) -> dict[str, bytes]:
    return load_dump(DUMPS / rel)


def config(rel: str, bdf: str) -> ConfigSpace:
    return parse_config_space(dump(rel)[bdf])


def test_corpus_has_all_dumps():
    assert len(ALL_DUMPS) == 62
    assert sum(len(dump(str(p.relative_to(DUMPS)))) for p in ALL_DUMPS) == 530


@pytest.mark.parametrize("path", ALL_DUMPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_dump_decodes(path):
    devices = dump(str(path.relative_to(DUMPS)))
    assert devices, "no device found"
    for bdf, data in devices.items():
        assert len(data) >= 64 and len(data) % 16 == 0, bdf
        if data[:2] == b"\xff\xff":  # a function that read as all ones
            assert (path.name, bdf) == (LATITUDE.split("/")[1], "0000:01:00.1")
            with pytest.raises(ConfigSpaceError, match="all ones"):
                parse_config_space(data)
            continue
        cfg = parse_config_space(data)
        assert cfg.vendor_id != 0x0000, bdf
        assert cfg.length == len(data)
        assert cfg.truncated is (len(data) < 256)
        # Full dumps: every fact is read (None or a value), never UNKNOWN.
        for field in ("capabilities", "msi", "msix", "pcie", "pm"):
            assert getattr(cfg, field) is not UNKNOWN, (bdf, field)
        assert cfg.capabilities_problem is None, (bdf, cfg.capabilities_problem)
        if path.name != "broken-ecaps.txt":
            if len(data) >= 4096 or cfg.pcie is None:
                assert cfg.extended is not UNKNOWN, bdf
            assert cfg.problems == (), (bdf, cfg.problems)
        if not cfg.has_capability_list:
            assert cfg.capabilities == (), bdf


def test_dump_keys_are_full_bdfs():
    assert sorted(dump(H310))[:3] == ["0000:00:00.0", "0000:00:01.0", "0000:00:08.0"]
    assert "0001:62:00.0" in dump("pciutils-tests/PCI-X-bridges-and-domains.txt")
    assert list(dump("libvirt-virpcitestdata/0005-90-01.2.lspci-x.txt")) == ["0005:90:01.2"]


def test_dump_stops_at_spliced_stderr_message():
    # bd4: "f10: 00 ... 00 pcilib: sysfs_read_vpd: read failed" ends 05:00.1 at 0xf10.
    assert len(dump(BD4)["0000:05:00.1"]) == 0xF10
    cfg = config(BD4, "0000:05:00.1")
    assert cfg.vendor_id == 0x1002 and cfg.device_id == 0xAB28
    assert cfg.problems == ()
    # The devices after it are still recovered.
    assert len(dump(BD4)) == 87


def test_gtx550ti_and_hdmi_audio():
    gpu = config(H310, "0000:01:00.0")
    # 01:00.0 VGA ... [10de:1244] (rev a1), Subsystem [1462:809d]
    assert (gpu.vendor_id, gpu.device_id, gpu.revision) == (0x10DE, 0x1244, 0xA1)
    assert (gpu.subsystem_vendor_id, gpu.subsystem_device_id) == (0x1462, 0x809D)
    assert gpu.class_code == 0x030000
    assert gpu.intx_disable  # Control: ... DisINTx+
    assert not gpu.interrupt_status  # Status: ... INTx-
    assert gpu.intx_pin_letter == "A"  # Interrupt: pin A
    # Capabilities: [60] Power Management version 3
    assert (gpu.pm.offset, gpu.pm.version) == (0x60, 3)
    # Capabilities: [68] MSI: Enable+ Count=1/1 Maskable- 64bit+
    assert (gpu.msi.offset, gpu.msi.enabled, gpu.msi.vectors, gpu.msi.maskable, gpu.msi.is_64bit) == (
        0x68, True, 1, False, True)
    # Capabilities: [78] Express (v2) Endpoint
    assert (gpu.pcie.offset, gpu.pcie.version, gpu.pcie.port_type) == (0x78, 2, "endpoint")
    assert gpu.msix is None
    assert [(c.name, c.offset) for c in gpu.capabilities] == [
        ("pm", 0x60), ("msi", 0x68), ("pcie", 0x78), ("vendor", 0xB4)]
    # [100 v1] Virtual Channel, [128 v1] Power Budgeting, [600 v1] Vendor Specific
    assert [(e.name, e.offset, e.version) for e in gpu.extended] == [
        ("vc", 0x100, 1), ("power-budget", 0x128, 1), ("vendor", 0x600, 1)]
    assert gpu.supports_msi is True

    audio = config(H310, "0000:01:00.1")
    # 01:00.1 Audio device [0403]: NVIDIA ... [10de:0bee] (rev a1)
    assert (audio.vendor_id, audio.device_id, audio.class_code) == (0x10DE, 0x0BEE, 0x040300)
    assert audio.intx_pin_letter == "B" and not audio.intx_disable  # DisINTx-
    # Capabilities: [68] MSI: Enable- Count=1/1 Maskable- 64bit+
    assert (audio.msi.enabled, audio.msi.is_64bit, audio.msi.maskable) == (False, True, False)
    assert audio.pcie.port_type == "endpoint"


def test_gt335m_gpu_matches_lspci_text():
    gpu = config(M11X, "0000:01:00.0")
    assert (gpu.vendor_id, gpu.device_id, gpu.revision) == (0x10DE, 0x0CAF, 0xA2)
    assert (gpu.subsystem_vendor_id, gpu.subsystem_device_id) == (0x1028, 0x0443)
    assert gpu.msi.enabled and gpu.msi.is_64bit and gpu.pcie.version == 2


def test_navi23_gpu_and_audio():
    gpu = config(QD4, "0000:05:00.0")
    # [1002:73ff] (rev c3), Subsystem [1002:0e36]
    assert (gpu.vendor_id, gpu.device_id, gpu.revision) == (0x1002, 0x73FF, 0xC3)
    assert gpu.subsystem_device_id == 0x0E36
    # [50] Power Management version 3; [64] Express (v2) Legacy Endpoint;
    # [a0] MSI: Enable+ Count=1/1 Maskable- 64bit+
    assert (gpu.pm.offset, gpu.pm.version) == (0x50, 3)
    assert (gpu.pcie.offset, gpu.pcie.port_type) == (0x64, "legacy-endpoint")
    assert (gpu.msi.offset, gpu.msi.enabled, gpu.msi.is_64bit, gpu.msi.maskable) == (0xA0, True, True, False)
    ext = {e.offset: e.name for e in gpu.extended}
    # [150 v2] AER, [200 v1] Resizable BAR, [2a0 v1] ACS, [320 v1] LTR, [410 v1] PL 16 GT/s
    assert ext[0x150] == "aer" and ext[0x200] == "rebar" and ext[0x2A0] == "acs"
    assert ext[0x320] == "ltr" and ext[0x410] == "pl-16gt"
    assert len(gpu.extended) == 10
    assert gpu.extended[1].version == 2  # [150 v2]

    audio = config(QD4, "0000:05:00.1")
    assert (audio.vendor_id, audio.device_id) == (0x1002, 0xAB28)
    assert audio.intx_pin_letter == "B"
    assert [e.offset for e in audio.extended] == [0x100, 0x150, 0x2A0]


def test_msix_table_sizes():
    # qd4 02:00.0 Realtek NVMe: [50] MSI: Enable- Count=1/8, [b0] MSI-X: Enable+ Count=9 Masked-
    nvme = config(QD4, "0000:02:00.0")
    assert (nvme.msix.offset, nvme.msix.table_size, nvme.msix.enabled, nvme.msix.function_masked) == (
        0xB0, 9, True, False)
    assert (nvme.msi.vectors, nvme.msi.enabled) == (8, False)
    # h310 02:00.0 RTL8168: [b0] MSI-X: Enable+ Count=4 Masked-
    nic = config(H310, "0000:02:00.0")
    assert (nic.msix.offset, nic.msix.table_size) == (0xB0, 4)
    # cap-aer-root 03:00.0 ConnectX-3 Pro: [9c] MSI-X: Enable+ Count=256 Masked-
    cx3 = config("pciutils-tests/cap-aer-root.txt", "0000:03:00.0")
    assert (cx3.msix.offset, cx3.msix.table_size, cx3.msix.enabled) == (0x9C, 256, True)
    # acer: [90] MSI-X: Enable- Count=1 Masked-
    acer_msix = [cfg.msix for cfg in map(parse_config_space, dump(ACER).values()) if cfg.msix]
    assert [(m.offset, m.table_size, m.enabled) for m in acer_msix] == [(0x90, 1, False)]


def test_root_port_with_maskable_32bit_msi():
    # qd4 00:01.0: [60] MSI: Enable+ Count=1/2 Maskable+ 64bit-; [90] Express (v2) Root Port
    port = config(QD4, "0000:00:01.0")
    assert port.header_type & 0x7F == 1
    assert port.subsystem_vendor_id is None  # type 1 header has no subsystem ids
    assert (port.msi.offset, port.msi.maskable, port.msi.is_64bit, port.msi.vectors,
            port.msi.vectors_enabled) == (0x60, True, False, 2, 1)
    assert (port.pcie.offset, port.pcie.port_type) == (0x90, "root-port")


def test_switch_port_types():
    # qd4 03:00.0 Navi 10 XL Upstream Port, 04:00.0 its downstream port
    assert config(QD4, "0000:03:00.0").pcie.port_type == "upstream-port"
    assert config(QD4, "0000:04:00.0").pcie.port_type == "downstream-port"


def test_conventional_usb_has_pm_version_2_and_no_pcie():
    # qd4 00:1a.0 EHCI: [50] Power Management version 2, no Express capability
    ehci = config(QD4, "0000:00:1a.0")
    assert (ehci.pm.offset, ehci.pm.version) == (0x50, 2)
    assert ehci.pcie is None and ehci.msi is None and ehci.msix is None
    assert ehci.supports_msi is False
    assert ehci.extended == ()
    assert ehci.intx_pin_letter == "C"


def test_cardbus_bridge_layout():
    # acer 0d:06.0 CardBus bridge [1217:7135], Subsystem [1025:013c],
    # Capabilities: [a0] Power Management version 2 (pointer at 0x14, not 0x34)
    cb = config(ACER, "0000:0d:06.0")
    assert cb.header_type & 0x7F == 2
    assert (cb.subsystem_vendor_id, cb.subsystem_device_id) == (0x1025, 0x013C)
    assert [(c.name, c.offset) for c in cb.capabilities] == [("pm", 0xA0)]
    assert cb.pm.version == 2


def test_status_cap_bit_with_null_pointer():
    # qd4 ff:13.0 (Xeon E5 v3 IMC): Status: Cap+ but the pointer at 0x34 is 0.
    cfg = config(QD4, "0000:ff:13.0")
    assert cfg.has_capability_list and cfg.capabilities == () and cfg.problems == ()


def test_all_ones_header_is_not_decoded_as_a_device():
    # latitude 01:00.1 NVIDIA GF108 HDMI audio, first 64 bytes ff, rest 00
    with pytest.raises(ConfigSpaceError, match="all ones"):
        config(LATITUDE, "0000:01:00.1")


def test_broken_ecaps_reports_loop():
    devices = dump("pciutils-tests/broken-ecaps.txt")
    cfg = parse_config_space(devices["0000:00:00.0"])
    assert cfg.length == 4096
    assert any("loops" in p for p in cfg.problems), cfg.problems
    # The part before the loop is not offered as the list.
    assert cfg.extended is UNKNOWN and "loops" in cfg.extended_problem
    # The standard list is intact and stays known.
    assert cfg.capabilities_problem is None and cfg.pcie is not UNKNOWN


# --- truncation -----------------------------------------------------------

def test_cut_to_64_bytes_is_unknown_not_none():
    full = dump(H310)["0000:01:00.0"]
    cfg = parse_config_space(full[:64])
    assert cfg.truncated
    for field in ("capabilities", "msi", "msix", "pcie", "pm", "extended"):
        assert getattr(cfg, field) is UNKNOWN, field
    assert cfg.supports_msi is UNKNOWN
    # The header itself is still there.
    assert (cfg.vendor_id, cfg.device_id, cfg.subsystem_device_id) == (0x10DE, 0x1244, 0x809D)
    assert cfg.intx_pin_letter == "A" and cfg.problems == ()


def test_unknown_sentinel():
    assert UNKNOWN is type(UNKNOWN)()
    assert not UNKNOWN
    assert repr(UNKNOWN) == "UNKNOWN"
    assert UNKNOWN is not None


def test_cut_to_256_bytes_pcie_extended_unknown():
    full = dump(H310)["0000:01:00.0"]
    cfg = parse_config_space(full[:256])
    assert not cfg.truncated
    assert cfg.pcie.port_type == "endpoint" and cfg.msi.enabled
    assert cfg.extended is UNKNOWN
    # A conventional device cut to 256 bytes has no extended space at all.
    ehci = parse_config_space(dump(QD4)["0000:00:1a.0"][:256])
    assert ehci.extended == ()


def test_pcie_cut_before_first_extended_header():
    full = dump(H310)["0000:01:00.0"]
    cfg = parse_config_space(full[:258])
    assert cfg.pcie.port_type == "endpoint"
    assert cfg.extended is UNKNOWN


def test_partial_extended_space_is_unknown():
    # 0x130 bytes: VC at 0x100 is readable, its next (0x128) header is too,
    # but Power Budgeting's next (0x600) is past the end: our read was short,
    # so the list is unknown, not a device problem.
    cfg = parse_config_space(dump(H310)["0000:01:00.0"][:0x130])
    assert cfg.extended is UNKNOWN
    assert cfg.problems == ()


def test_cut_inside_the_capability_list():
    full = dump(H310)["0000:01:00.0"]
    # The MSI header at 0x68 is readable, its control word at 0x6a is not.
    cfg = parse_config_space(full[:0x6A])
    assert cfg.capabilities is UNKNOWN and cfg.msi is UNKNOWN
    assert cfg.truncated
    assert cfg.capabilities_problem == "config space truncated at 106 bytes"
    assert cfg.damaged and not cfg.unprivileged_read


def test_cut_to_64_bytes_is_named_unprivileged_not_damaged():
    cfg = parse_config_space(dump(H310)["0000:01:00.0"][:64])
    assert cfg.capabilities_problem.startswith("only the first 64 bytes are readable without "
                                               "CAP_SYS_ADMIN")
    assert cfg.unprivileged_read and not cfg.damaged


def test_cut_at_255_bytes_is_unknown_although_the_walk_ends_inside():
    """The walk of the Navi 23 audio ends at 0xa0, well inside 255 bytes, but
    no sysfs read stops at 255: the file is damaged, the list not trusted."""
    full = dump(QD4)["0000:05:00.1"]
    assert parse_config_space(full[:256]).msi.offset == 0xA0
    cfg = parse_config_space(full[:255])
    assert cfg.capabilities is UNKNOWN and cfg.msi is UNKNOWN and cfg.supports_msi is UNKNOWN
    assert cfg.capabilities_problem == "config space truncated at 255 bytes"


@pytest.mark.parametrize("length", [0, 1, 16, 63])
def test_fewer_than_64_bytes_raises(length):
    with pytest.raises(ConfigSpaceError, match=f"truncated at {length} bytes; at least 64"):
        parse_config_space(dump(H310)["0000:01:00.0"][:length])


def test_config_space_error_is_value_error():
    assert issubclass(ConfigSpaceError, ValueError)


# --- hand-built lists -----------------------------------------------------

def header(cap_pointer: int | None, length: int = 256) -> bytearray:
    data = bytearray(length)
    data[0:4] = bytes.fromhex("86801234")  # 8086:3412
    data[0x0E] = 0x00
    if cap_pointer is not None:
        data[0x06] = 0x10  # Status: Cap+
        data[0x34] = cap_pointer
    return data


def test_capability_list_loop():
    data = header(0x40)
    data[0x40:0x42] = bytes([0x01, 0x50])  # PM -> 0x50
    data[0x50:0x52] = bytes([0x05, 0x40])  # MSI -> back to 0x40
    cfg = parse_config_space(bytes(data))
    assert cfg.problems == ("capability list loops at 0x40",)
    # The kernel's walk gives up at a loop too (__pci_find_next_cap_ttl):
    # nothing from the list is trusted, not even the MSI seen before it.
    assert cfg.capabilities is UNKNOWN and cfg.msi is UNKNOWN and cfg.pm is UNKNOWN
    assert cfg.capabilities_problem == "capability list loops at 0x40"
    assert cfg.damaged


def test_loop_before_msi_is_not_msi_absent():
    """A loop that hides the MSI capability must not read as "MSI: absent"."""
    data = header(0x40)
    data[0x40:0x42] = bytes([0x01, 0x50])  # PM -> 0x50
    data[0x50:0x52] = bytes([0x10, 0x40])  # PCIe -> back to 0x40
    data[0x60:0x62] = bytes([0x05, 0x00])  # MSI, never reached
    cfg = parse_config_space(bytes(data))
    assert cfg.msi is UNKNOWN and cfg.supports_msi is UNKNOWN


def test_capability_self_loop():
    data = header(0x40)
    data[0x40:0x42] = bytes([0x10, 0x40])
    cfg = parse_config_space(bytes(data))
    assert cfg.capabilities is UNKNOWN and cfg.pcie is UNKNOWN
    assert cfg.capabilities_problem == "capability list loops at 0x40"


def test_capability_pointer_below_0x40():
    cfg = parse_config_space(bytes(header(0x10)))
    assert cfg.capabilities is UNKNOWN
    assert cfg.problems == ("capability pointer 0x10 points into the header (below 0x40)",)
    assert cfg.msi is UNKNOWN and cfg.pcie is UNKNOWN
    assert cfg.capabilities_problem == cfg.problems[0]


def test_capability_next_pointer_below_0x40_mid_list():
    data = header(0x40)
    data[0x40:0x42] = bytes([0x01, 0x3C])
    cfg = parse_config_space(bytes(data))
    assert cfg.capabilities is UNKNOWN and cfg.pm is UNKNOWN
    assert len(cfg.problems) == 1 and "0x3c" in cfg.problems[0]
    assert "0x3c points into the header" in cfg.capabilities_problem


def test_capability_pointer_at_top_of_space():
    # 0xff has its reserved low bits masked off (0xfc); a capability there is
    # the last one that fits and must not read past 0xff.
    data = header(0xFF)
    data[0xFC:0x100] = bytes([0x05, 0x00, 0x80, 0x00])
    cfg = parse_config_space(bytes(data))
    assert [(c.id, c.offset) for c in cfg.capabilities] == [(0x05, 0xFC)]
    assert cfg.msi.is_64bit and cfg.problems == ()


def test_capability_pointer_reserved_bits_masked():
    data = header(0x43)
    data[0x40:0x42] = bytes([0x11, 0x00])
    data[0x42:0x44] = (0x8000 | 15).to_bytes(2, "little")
    cfg = parse_config_space(bytes(data))
    assert cfg.msix.offset == 0x40 and cfg.msix.table_size == 16 and cfg.msix.enabled


def test_status_without_cap_list_ignores_pointer():
    data = header(None)
    data[0x34] = 0x40
    data[0x40:0x42] = bytes([0x05, 0x00])
    cfg = parse_config_space(bytes(data))
    assert cfg.capabilities == () and cfg.msi is None and not cfg.has_capability_list


def test_extended_list_problems():
    data = header(0x40, 4096)
    data[0x40:0x44] = bytes([0x10, 0x00, 0x02, 0x00])  # PCIe v2 endpoint
    # AER at 0x100 -> 0x80 (below 0x100)
    data[0x100:0x104] = (0x0001 | (1 << 16) | (0x80 << 20)).to_bytes(4, "little")
    cfg = parse_config_space(bytes(data))
    assert cfg.extended is UNKNOWN and cfg.pcie.version == 2
    assert cfg.problems == ("extended capability pointer 0x080 points below 0x100",)
    assert cfg.extended_problem == cfg.problems[0]
    # AER at 0x100 -> ACS at 0x200 -> back to 0x100
    data[0x100:0x104] = (0x0001 | (1 << 16) | (0x200 << 20)).to_bytes(4, "little")
    data[0x200:0x204] = (0x000D | (1 << 16) | (0x100 << 20)).to_bytes(4, "little")
    cfg = parse_config_space(bytes(data))
    assert cfg.extended is UNKNOWN
    assert cfg.problems == ("extended capability list loops at 0x100",)


@pytest.mark.parametrize("value", [0x00000000, 0xFFFFFFFF])
def test_empty_extended_space(value):
    data = header(0x40, 4096)
    data[0x40:0x44] = bytes([0x10, 0x00, 0x02, 0x00])
    data[0x100:0x104] = value.to_bytes(4, "little")
    cfg = parse_config_space(bytes(data))
    assert cfg.extended == () and cfg.problems == ()


def test_reserved_pcie_port_type():
    data = header(0x40)
    data[0x40:0x44] = bytes([0x10, 0x00, 0xB2, 0x00])  # type 0xb, version 2
    assert parse_config_space(bytes(data)).pcie.port_type == "type-11"


def test_msi_vector_counts():
    data = header(0x40)
    data[0x40:0x42] = bytes([0x05, 0x00])
    # MMC = 5 (32 vectors), MME = 2 (4 enabled), 64-bit, per-vector masking
    data[0x42:0x44] = ((5 << 1) | (2 << 4) | 0x80 | 0x100 | 1).to_bytes(2, "little")
    msi = parse_config_space(bytes(data)).msi
    assert (msi.vectors, msi.vectors_enabled, msi.is_64bit, msi.maskable, msi.enabled) == (
        32, 4, True, True, True)
    # Reserved MMC values 6 and 7 are clamped to 32.
    data[0x42:0x44] = (7 << 1).to_bytes(2, "little")
    assert parse_config_space(bytes(data)).msi.vectors == 32


def test_lspci_dump_inline_edge_cases():
    text = textwrap.dedent("""\
        garbage before any header
        00: ff ff ff ff
        0000:00:1f.0 ISA bridge: Intel Corporation Device
        00: 86 80 0a 1e 07 00 10 02 00 00 01 06 00 00 80 00
        10: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        \tsome -vvv text in between
        20: 00 00 00 00 00 00 00 00 00 00 00 00 86 80 1a 1e
        30: 00 00 00 00 e0 00 00 00 00 00 00 00 00 00 00 00
        50: 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11
        01:00.0 VGA compatible controller: nothing follows

        02:00.0 only a gap
        10: 00 00
        """)
    devices = parse_lspci_dump(text)
    assert list(devices) == ["0000:00:1f.0"]  # no bytes, no entry; rows before a header dropped
    data = devices["0000:00:1f.0"]
    assert len(data) == 64  # the 0x50 row after a gap is dropped
    cfg = parse_config_space(data)
    assert (cfg.vendor_id, cfg.device_id, cfg.subsystem_device_id) == (0x8086, 0x1E0A, 0x1E1A)
    assert cfg.capabilities is UNKNOWN  # pointer 0xe0 beyond the 64 bytes


# --- libvirt binary config files ------------------------------------------

VIRPCI_IDS = {
    "0000-00-01.0": (0x8086, 0x4238, 4096),
    "0000-00-02.0": (0x8086, 0x0046, 256),
    "0000-00-03.0": (0x1180, 0xE822, 4096),
    "0001-00-00.0": (0x1014, 0x03B9, 4096),
    "0001-01-00.0": (0x8086, 0x105E, 4096),
    "0001-01-00.1": (0x8086, 0x105E, 4096),
    "0005-80-00.0": (0x10B5, 0x8112, 4096),
    "0005-90-01.0": (0x1033, 0x0035, 256),
    "0005-90-01.1": (0x1033, 0x0035, 256),
    "0005-90-01.2": (0x1033, 0x00E0, 256),
}


def test_virpci_files_listed():
    assert {p.stem for p in VIRPCI.glob("*.config")} == set(VIRPCI_IDS)


@pytest.mark.parametrize("stem", sorted(VIRPCI_IDS))
def test_virpci_binary_config_matches_text(stem):
    vendor, device, length = VIRPCI_IDS[stem]
    data = (VIRPCI / f"{stem}.config").read_bytes()
    assert len(data) == length
    cfg = parse_config_space(data)
    assert (cfg.vendor_id, cfg.device_id) == (vendor, device)
    assert cfg.problems == ()
    text = (DUMPS / "libvirt-virpcitestdata" / f"{stem}.lspci-x.txt").read_text()
    bdf = stem[:4] + ":" + stem[5:7] + ":" + stem[8:]
    assert parse_lspci_dump(text) == {bdf: data}


def test_virpci_pcie_bridge():
    # 0005:80:00.0 PLX PEX8112 x1 Lane PCI Express-to-PCI Bridge
    cfg = parse_config_space((VIRPCI / "0005-80-00.0.config").read_bytes())
    assert cfg.pcie.port_type == "pcie-to-pci-bridge"
    assert cfg.header_type & 0x7F == 1
