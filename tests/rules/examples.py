"""The example fixtures that the rules name in `fires_on` / `silent_on`.

Each example writes a host tree with tests/hosttree.py (config bytes from real
dumps only, /proc/interrupts derived from a real capture), pairs it with a
domain XML, and runs the engine's own gather functions on them, so the facts
a rule sees are the ones the CLI would see for that host.

    facts = EXAMPLES["sblive-shared-line"](tmp_path)

Devices and where their bytes come from (tests/data/hosts/configs/PROVENANCE.md):

    0000:05:00.0/.1   AMD Navi 23 GPU + HDMI audio, Huananzhi X99-QD4 dump,
                      behind 00:02.0 -> 03:00.0 -> 04:00.0 as on that board
    0000:08:00.0      Creative SB Live! EMU10K1 (PCI PM 1.0, no MSI), moved from 00:0b.0
    0000:08:01.0      NEC uPD720101 OHCI (PCI PM 1.1, no MSI), moved from 0005:90:01.0
    0000:07:00.0      PLX PEX8112 PCIe-to-PCI bridge above them, moved from 0005:80:00.0
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from vfio_advisor.engine import DeviceCache, DomainFacts, gather_domain, gather_host, read_interrupts
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pci_config import parse_config_space
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.testing.scenes import (  # noqa: F401 - examples' names for their users
    AUDIO, GPU, QD4, domain_xml, gpu_audio_hostdevs,
)
from vfio_advisor.testing.scenes import gpu_audio_devices as _gpu_audio
from vfio_advisor.testing.scenes import hostdev_xml as _hostdev
from vfio_advisor.testing.hosttree import (
    DEFAULT_VFIO_PCI_PARAMS,
    Device,
    capture_under_platform,
    Host,
    build,
    edit_interrupts,
    irq_row,
    load_capture,
    load_config,
    rename_handler,
    sriov_vf_bdf,
)

Example = Callable[[Path], DomainFacts]
EXAMPLES: dict[str, Example] = {}


def example(name: str) -> Callable[[Example], Example]:
    def register(fn: Example) -> Example:
        assert name not in EXAMPLES, name
        EXAMPLES[name] = fn
        return fn
    return register


# --- real inputs ------------------------------------------------------------

SBLIVE_DUMP = "lkml-2001-08-14_sblive-emu10k1.txt"
PLX_DUMP = "0005-80-00.0.lspci-x.txt"
NEC_DUMP = "0005-90-01.0.lspci-x.txt"
# 8 CPUs, interrupt remapping on (IR- chips), pre-4.3 row format; IRQ 16 is
# "ehci_hcd:usb5" alone, 45 is "vfio-msi[0](0000:07:00.0)".
IR_CAPTURE = "forum-post_2015-10-24_vfio-msi_8cpu.txt"

SBLIVE, NEC, PLX = "0000:08:00.0", "0000:08:01.0", "0000:07:00.0"
EHCI = "ehci_hcd:usb5"  # the host handler on IRQ 16 in IR_CAPTURE

# Pre-4.3 format rows, as in IR_CAPTURE.
def _msi_row(irq: int, counts: list[int], handler: str) -> str:
    return irq_row(irq, counts, "IR-PCI-MSI", "edge", [handler])


def _ioapic_row(irq: int, counts: list[int], handlers: list[str]) -> str:
    return irq_row(irq, counts, "IR-IO-APIC", "fasteoi", handlers, hwirq=irq)


def _ir_interrupts(rows: dict[int, str | None], gpu: bool = True) -> str:
    """IR_CAPTURE with `rows` edited in; with `gpu`, the captured vfio-msi[0]
    row (IRQ 45) becomes the Navi 23's, counts unchanged."""
    text = load_capture(IR_CAPTURE)
    if gpu:
        text = rename_handler(text, "vfio-msi[0](0000:07:00.0)", f"vfio-msi[0]({GPU})")
    return edit_interrupts(text, rows)


# --- host devices -----------------------------------------------------------

def _legacy_pci(*, sblive_irq: int | None = None, nec_irq: int | None = None) -> list[Device]:
    devices = [
        Device("0000:00:1c.0", load_config(QD4, "00:1c.0"), driver="pcieport", iommu_group=31, irq=None),
        Device(PLX, load_config(PLX_DUMP, "0005:80:00.0"), parent="0000:00:1c.0", driver=None,
               iommu_group=38, irq=None),
    ]
    if sblive_irq is not None:
        devices.append(Device(SBLIVE, load_config(SBLIVE_DUMP, "00:0b.0"), parent=PLX,
                              iommu_group=38, irq=sblive_irq))
    if nec_irq is not None:
        devices.append(Device(NEC, load_config(NEC_DUMP, "0005:90:01.0"), parent=PLX,
                              iommu_group=38, irq=nec_irq))
    return devices


# --- domains ----------------------------------------------------------------

# --- running the engine -----------------------------------------------------

def analyse(root: Path, host: Host, xml: str, *, resample: bool = False) -> DomainFacts:
    """Build `host` under `root` and gather the domain's facts as the CLI does.

    `resample`: read /proc/interrupts a second time, as `--sample` does after
    its sleep; the tree does not change in between, so nothing counted.
    """
    build(root, host)
    hr = HostRoot(root)
    host_facts = gather_host(hr)
    if resample:
        host_facts = host_facts._replace(later=read_interrupts(hr), sample_seconds=10.0)
    return gather_domain(parse_domain_xml(xml), host_facts, DeviceCache(hr, PciIds(None)))


# --- the examples -----------------------------------------------------------

def _audio_on_shared_intx_host() -> Host:
    # Audio on vfio-intx, sharing IRQ 16 with the capture's EHCI (the first
    # action registered, at boot, is printed first).
    return Host(
        devices=_gpu_audio(gpu_irq=45, audio_irq=16, gpu_msi=(45,)),
        interrupts=_ir_interrupts({16: _ioapic_row(16, [301514, 0, 0, 0, 0, 9, 0, 0],
                                                   [EHCI, f"vfio-intx({AUDIO})"])}))


def _audio_on_own_intx_host() -> Host:
    # Audio alone on IRQ 28 (a line the capture does not use).
    return Host(
        devices=_gpu_audio(gpu_irq=45, audio_irq=28, gpu_msi=(45,)),
        interrupts=_ir_interrupts({28: _ioapic_row(28, [448207, 0, 0, 0, 0, 0, 0, 0],
                                                   [f"vfio-intx({AUDIO})"])}))


def _both_on_msi_host(config_bytes: int | None = None) -> Host:
    return Host(
        devices=_gpu_audio(gpu_irq=45, audio_irq=51, gpu_msi=(45,), audio_msi=(51,),
                           config_bytes=config_bytes),
        interrupts=_ir_interrupts({51: _msi_row(51, [0, 0, 0, 182733, 0, 0, 0, 0],
                                                f"vfio-msi[0]({AUDIO})")}))


@example("gpu-audio-intx-windows")
def gpu_audio_intx_windows(tmp: Path) -> DomainFacts:
    """Windows 11 guest left the HDMI audio on INTx; its line is shared with EHCI."""
    return analyse(tmp, _audio_on_shared_intx_host(),
                   domain_xml("win11", gpu_audio_hostdevs(), os="windows"))


@example("gpu-audio-intx-windows-agent")
def gpu_audio_intx_windows_agent(tmp: Path) -> DomainFacts:
    """gpu-audio-intx-windows with the QEMU guest agent's channel: VA1001
    still fires, and `fix --guest` can reach the guest (no VA1002)."""
    channel = ("    <channel type='unix'>\n"
               "      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n")
    return analyse(tmp, _audio_on_shared_intx_host(),
                   domain_xml("win11", [*gpu_audio_hostdevs(), channel], os="windows"))


@example("gpu-audio-intx-linux")
def gpu_audio_intx_linux(tmp: Path) -> DomainFacts:
    """Debian guest left the HDMI audio on INTx (snd_hda_intel without MSI)."""
    return analyse(tmp, _audio_on_own_intx_host(),
                   domain_xml("debian", gpu_audio_hostdevs(), os="linux"))


@example("gpu-audio-msi")
def gpu_audio_msi(tmp: Path) -> DomainFacts:
    """The healthy case: Q35, one guest slot, both functions on vfio-msi."""
    return analyse(tmp, _both_on_msi_host(), domain_xml("win11", gpu_audio_hostdevs()))


@example("intx-sampled-idle")
def intx_sampled_idle(tmp: Path) -> DomainFacts:
    """Audio on vfio-intx with a large count, but read twice with no change."""
    return analyse(tmp, _audio_on_own_intx_host(), domain_xml("win11", gpu_audio_hostdevs()),
                   resample=True)


@example("intx-only-usb")
def intx_only_usb(tmp: Path) -> DomainFacts:
    """Running guest with the NEC OHCI (no MSI) on vfio-intx, sharing IRQ 16 with EHCI."""
    host = Host(
        devices=_legacy_pci(nec_irq=16),
        interrupts=_ir_interrupts({16: _ioapic_row(16, [58213, 0, 0, 0, 0, 9, 0, 0],
                                                   [EHCI, f"vfio-intx({NEC})"])}, gpu=False))
    return analyse(tmp, host, domain_xml("usbvm", [_hostdev(NEC, (0x00, 0x10, 0))], os="linux"))


@example("intx-exclusive-line")
def intx_exclusive_line(tmp: Path) -> DomainFacts:
    """Running guest with the SB Live! on vfio-intx, alone on IRQ 17."""
    host = Host(
        devices=_legacy_pci(sblive_irq=17),
        interrupts=_ir_interrupts({17: _ioapic_row(17, [92412, 0, 0, 0, 0, 0, 0, 0],
                                                   [f"vfio-intx({SBLIVE})"])}, gpu=False))
    return analyse(tmp, host, domain_xml("oldbox", [_hostdev(SBLIVE, (0x00, 0x05, 0))],
                                         os="win7", machine="pc-i440fx-6.2"))


@example("sblive-shared-line")
def sblive_shared_line(tmp: Path) -> DomainFacts:
    """Shut-off guest; the SB Live! (PCI PM 1.0: likely no INTx masking, not
    proven) on vfio-pci, sysfs irq 16, which EHCI holds. Nothing records how
    the kernel's probe of its Command bit 10 came out, nor a failed start,
    and no handler of its own is on IRQ 16: both the masking and the line
    are hedged (VA2003)."""
    host = Host(devices=_legacy_pci(sblive_irq=16), interrupts=_ir_interrupts({}, gpu=False))
    return analyse(tmp, host, domain_xml("oldbox", [_hostdev(SBLIVE, (0x00, 0x05, 0))],
                                         os="win7", machine="pc-i440fx-6.2"))


@example("nec-host-driver-shared-nointxmask")
def nec_host_driver_shared_nointxmask(tmp: Path) -> DomainFacts:
    """Shut-off guest; vfio_pci nointxmask=1, so no device masks INTx; the
    NEC OHCI still on its host driver ohci-pci (managed='yes': libvirt
    unbinds it at start), whose handler "ohci_hcd:usb7" shares IRQ 16 with
    EHCI. ohci-pci enabled the device, so the kernel routed it to IRQ 16
    (acpi_pci_irq_enable): the line is confirmed, and VA2002 is firm."""
    params = {**DEFAULT_VFIO_PCI_PARAMS, "nointxmask": "Y"}
    devices = _legacy_pci(nec_irq=16)
    devices[-1].driver = "ohci-pci"
    devices[-1].attrs = {"usb7/busnum": "7"}
    row = _ioapic_row(16, [301514, 0, 0, 0, 0, 9, 0, 0], [EHCI, "ohci_hcd:usb7"])
    host = Host(devices=devices, interrupts=_ir_interrupts({16: row}, gpu=False),
                vfio_pci_params=params)
    return analyse(tmp, host, domain_xml("usbvm", [_hostdev(NEC, (0x00, 0x10, 0))], os="linux"))


@example("conventional-unknown-shared")
def conventional_unknown_shared(tmp: Path) -> DomainFacts:
    """Shut-off guest; the NEC OHCI (PM 1.1, masking not shown) is on IRQ 16 with EHCI."""
    host = Host(devices=_legacy_pci(nec_irq=16), interrupts=_ir_interrupts({}, gpu=False))
    return analyse(tmp, host, domain_xml("usbvm", [_hostdev(NEC, (0x00, 0x10, 0))], os="linux"))


# pci=nomsi and intremap=off with allow_unsafe_interrupts=1 were hand-made
# trees here; the lab's real kernels now prove VA3001 and VA3002
# (examples "lab-nomsi" and "lab-intremap-off" below).


@example("i440fx-intx-only")
def i440fx_intx_only(tmp: Path) -> DomainFacts:
    """i440FX guest (shut off) with the NEC OHCI, which has INTx only; its line is free."""
    host = Host(devices=_legacy_pci(nec_irq=17), interrupts=_ir_interrupts({}, gpu=False))
    return analyse(tmp, host, domain_xml("oldbox", [_hostdev(NEC, (0x00, 0x06, 0))],
                                         os="win7", machine="pc-i440fx-6.2"))


@example("gpu-audio-split")
def gpu_audio_split(tmp: Path) -> DomainFacts:
    """Both functions on vfio-msi, but the audio sits in another guest slot."""
    return analyse(tmp, _both_on_msi_host(), domain_xml("win11", gpu_audio_hostdevs(split=True)))


# An SR-IOV PF and two of its VFs: Samsung PM174X NVMe [144d:a826] at
# 2e:00.0 (pciutils tests/cap-phy32, 4096 real bytes), whose SR-IOV capability
# says First VF Offset 32, VF Stride 1, VF Device ID a826.
NVME_DUMP = "cap-phy32.txt"
NVME_PF = "0000:2e:00.0"


def _two_vfs_host() -> tuple[Host, list[str]]:
    """The PF on nvme and VFs 0 and 1 on vfio-pci, where the kernel puts
    them: 2e:04.0 and 2e:04.1, one host slot (sriov_vf_bdf)."""
    pf_config = load_config(NVME_DUMP, "2e:00.0")
    vfs = [sriov_vf_bdf(NVME_PF, pf_config, i) for i in (0, 1)]
    # No hex dump of a VF is in the corpus (the ConnectX-5 VF of
    # /work/shared/corpus/lspci/hpe-skylake_connectx5-vf-vfio_lspci-vvv.txt is
    # -vvv only), so each VF carries its PF's real bytes at its own address.
    # A real VF reads 0xffff as vendor/device (PCIe base spec 9.3.4.1.1) and
    # the kernel serves the ids from the PF's capability; the id files written
    # from these bytes (144d:a826) are those values.
    devices = [Device(NVME_PF, pf_config, driver="nvme", iommu_group=40, msi_irqs=(0,),
                      msi_irq_mode="msix")]
    devices += [Device(vf, pf_config, physfn=NVME_PF, iommu_group=41 + i, msi_irqs=(0,),
                       msi_irq_mode="msix") for i, vf in enumerate(vfs)]
    return Host(devices=devices, interrupts=_ir_interrupts({}, gpu=False)), vfs


@example("sriov-vfs-own-guest-slots")
def sriov_vfs_own_guest_slots(tmp: Path) -> DomainFacts:
    """Two VFs of one PF share host slot 2e:04 and sit in two guest slots, each
    at function 0 of its own root port, as NFV hosts place them: independent
    devices (each with its own physfn link), not functions of one card, so
    VA4002 has nothing to join."""
    host, vfs = _two_vfs_host()
    return analyse(tmp, host, domain_xml("nfv", [_hostdev(vfs[0], (0x01, 0, 0)),
                                                 _hostdev(vfs[1], (0x02, 0, 0))], os="linux"))


@example("split-irqchip-intx")
def split_irqchip_intx(tmp: Path) -> DomainFacts:
    """<ioapic driver='qemu'/> with the HDMI audio on vfio-intx."""
    return analyse(tmp, _audio_on_own_intx_host(),
                   domain_xml("win11", gpu_audio_hostdevs(), features="    <ioapic driver='qemu'/>\n"))


@example("hostdev-missing")
def hostdev_missing(tmp: Path) -> DomainFacts:
    """The domain assigns 0000:0a:00.0, which this host does not have."""
    return analyse(tmp, _both_on_msi_host(),
                   domain_xml("win11", gpu_audio_hostdevs() + [_hostdev("0000:0a:00.0", (0x04, 0, 0))]))


@example("config-64-bytes")
def config_64_bytes(tmp: Path) -> DomainFacts:
    """Run without CAP_SYS_ADMIN: sysfs gives only the first 64 config bytes."""
    return analyse(tmp, _both_on_msi_host(config_bytes=64), domain_xml("win11", gpu_audio_hostdevs()))


def _audio_intx_with_config(edit: Callable[[bytes], bytes]) -> Host:
    """gpu-audio-intx-windows's host (VA1001 fires there), the audio's config
    space replaced by `edit` of the real bytes."""
    host = _audio_on_shared_intx_host()
    for dev in host.devices:
        if dev.bdf == AUDIO:
            # The sysfs id files stay the device's own (the kernel serves
            # them from pci_dev, not from the damaged file).
            cs = parse_config_space(dev.config)
            dev.ids = False
            dev.attrs = {**dev.attrs, "vendor": f"0x{cs.vendor_id:04x}",
                         "device": f"0x{cs.device_id:04x}", "revision": f"0x{cs.revision:02x}",
                         "class": f"0x{cs.class_code:06x}",
                         "subsystem_vendor": f"0x{cs.subsystem_vendor_id:04x}",
                         "subsystem_device": f"0x{cs.subsystem_device_id:04x}"}
            dev.config = edit(dev.config)
    return host


@example("config-truncated-40-bytes")
def config_truncated_40_bytes(tmp: Path) -> DomainFacts:
    """The audio's config file cut to 40 bytes: fewer than any sysfs read
    returns (64 without CAP_SYS_ADMIN), so damage, not privilege."""
    return analyse(tmp, _audio_intx_with_config(lambda b: b[:40]),
                   domain_xml("win11", gpu_audio_hostdevs(), os="windows"))


@example("config-255-bytes")
def config_255_bytes(tmp: Path) -> DomainFacts:
    """The audio's config file cut to 255 bytes: the capability walk ends
    inside them, but no sysfs read stops there, so the list is not trusted."""
    return analyse(tmp, _audio_intx_with_config(lambda b: b[:255]),
                   domain_xml("win11", gpu_audio_hostdevs(), os="windows"))


def _audio_intx_with_rows(edit: Callable[[str], str]) -> Host:
    """gpu-audio-intx-windows's host (VA1001 fires there) with its
    /proc/interrupts text edited."""
    host = _audio_on_shared_intx_host()
    return Host(devices=host.devices, interrupts=edit(host.interrupts))


def _garble_row(irq: str, old: str, new: str) -> Callable[[str], str]:
    """Replace `old` by `new` in the row labelled `irq` alone."""
    def edit(text: str) -> str:
        rows = text.splitlines(keepends=True)
        (at,) = [i for i, r in enumerate(rows) if r.partition(":")[0].strip() == irq]
        assert old in rows[at], rows[at]
        rows[at] = rows[at].replace(old, new, 1)
        return "".join(rows)
    return edit


@example("intx-row-garbled")
def intx_row_garbled(tmp: Path) -> DomainFacts:
    """gpu-audio-intx-windows with one count of the audio's vfio-intx row
    (IRQ 16) garbled: its mode and its line's sharers are unknown."""
    return analyse(tmp, _audio_intx_with_rows(_garble_row("16", " 301514 ", " 30x514 ")),
                   domain_xml("win11", gpu_audio_hostdevs(), os="windows"))


@example("other-row-garbled")
def other_row_garbled(tmp: Path) -> DomainFacts:
    """gpu-audio-intx-windows with a count of another device's row (IRQ 8,
    rtc0) garbled: the audio's own rows were read whole."""
    return analyse(tmp, _audio_intx_with_rows(_garble_row("8", "          1 ", "         1x ")),
                   domain_xml("win11", gpu_audio_hostdevs(), os="windows"))


@example("proc-interrupts-empty")
def proc_interrupts_empty(tmp: Path) -> DomainFacts:
    """gpu-audio-intx-windows with an empty /proc/interrupts (as a copy
    emptied by `: > file` leaves it): no table at all."""
    return analyse(tmp, _audio_intx_with_rows(lambda text: ""),
                   domain_xml("win11", gpu_audio_hostdevs(), os="windows"))


def _loop_before_msi(config: bytes) -> bytes:
    """The Navi 23 audio's list is 0x48 vendor -> 0x50 PM -> 0x64 PCIe ->
    0xa0 MSI; PCIe's next pointer (0x65) turned back to 0x50 hides the MSI."""
    data = bytearray(config)
    assert data[0x64] == 0x10 and data[0x65] == 0xA0, "not the Navi 23 audio's list"
    data[0x65] = 0x50
    return bytes(data)


@example("capability-list-loops")
def capability_list_loops(tmp: Path) -> DomainFacts:
    """The audio's capability list loops before its MSI capability."""
    return analyse(tmp, _audio_intx_with_config(_loop_before_msi),
                   domain_xml("win11", gpu_audio_hostdevs(), os="windows"))


# Emulated devices as libvirt writes them after define.
E1000_ON_ROOT_SLOT_3 = """    <interface type='user'>
      <model type='e1000'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </interface>
"""

PXB_PCIE_WITH_E1000 = """    <controller type='pci' index='5' model='pcie-expander-bus'>
      <target busNr='254'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </controller>
    <controller type='pci' index='6' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </controller>
    <interface type='user'>
      <model type='e1000'/>
      <address type='pci' domain='0x0000' bus='0x06' slot='0x00' function='0x0'/>
    </interface>
"""


@example("guest-line-shared-q35")
def guest_line_shared_q35(tmp: Path) -> DomainFacts:
    """Q35: the HDMI audio (host pin B) behind root port 00:02.x routes to PIRQH,
    GSI 23, as does an e1000 (INTx only) on pcie.0 slot 3 pin A."""
    return analyse(tmp, _audio_on_own_intx_host(),
                   domain_xml("win11", gpu_audio_hostdevs() + [E1000_ON_ROOT_SLOT_3]))


@example("pxb-pcie-intx")
def pxb_pcie_intx(tmp: Path) -> DomainFacts:
    """Q35 with an e1000 (INTx only) behind a root port on a pcie-expander-bus."""
    return analyse(tmp, _both_on_msi_host(),
                   domain_xml("win11", gpu_audio_hostdevs() + [PXB_PCIE_WITH_E1000]))


@example("pxb-pcie-e1000e")
def pxb_pcie_e1000e(tmp: Path) -> DomainFacts:
    """Near miss of VA5003: pxb-pcie-intx with an e1000e instead of the e1000.
    QEMU's e1000e has MSI-X (hw/net/e1000e.c, e1000e_init_msix) and its Linux
    and Windows drivers use it, as does the root port above it (MSI for PME
    and hotplug): nothing behind the expander bus needs INTx."""
    old = "<model type='e1000'/>"
    assert old in PXB_PCIE_WITH_E1000
    return analyse(tmp, _both_on_msi_host(), domain_xml(
        "win11", gpu_audio_hostdevs() + [PXB_PCIE_WITH_E1000.replace(old, "<model type='e1000e'/>")]))


@example("pxb-pcie-hostdev-msi")
def pxb_pcie_hostdev_msi(tmp: Path) -> DomainFacts:
    """Near miss of VA5003: the GPU and its HDMI audio behind the root port on
    the pcie-expander-bus, both on vfio-msi on the host: their guest drivers
    enabled MSI, as the remedy asks."""
    pxb = PXB_PCIE_WITH_E1000[:PXB_PCIE_WITH_E1000.index("    <interface")]
    return analyse(tmp, _both_on_msi_host(), domain_xml("win11", [
        pxb, _hostdev(GPU, (0x06, 0, 0), multifunction=True), _hostdev(AUDIO, (0x06, 0, 1))]))


# Both functions of an Intel X710 for 10GbE SFP+ [8086:1572] (a real lspci
# -xxx, tests/data/hosts/configs/PROVENANCE.md), moved from 04:00.x to behind
# the QD4's root port 00:03.0. The ID is on both kernel lists: vfio_pci_nointx
# (the guest sees no pin) and quirk_broken_intx_masking (no masking).
X710_DUMP = "x710-sfp-plus_lspci-xxx.txt"
X710 = ("0000:02:00.0", "0000:02:00.1")


def _x710_on_ehci_line(nointxmask: str) -> Host:
    """The X710 on vfio-pci, both functions on IRQ 16 (INTA of one card),
    which the capture's EHCI holds; the guest is shut off."""
    params = {**DEFAULT_VFIO_PCI_PARAMS, "nointxmask": nointxmask}
    devices = [Device("0000:00:03.0", load_config(QD4, "00:03.0"), driver="pcieport",
                      iommu_group=29, irq=None)]
    devices += [Device(bdf, load_config(X710_DUMP, f"04:00.{fn}"), parent="0000:00:03.0",
                       iommu_group=30, irq=16) for fn, bdf in enumerate(X710)]
    return Host(devices=devices, interrupts=_ir_interrupts({}, gpu=False), vfio_pci_params=params)


def _x710_domain() -> str:
    return domain_xml("nfv", [_hostdev(X710[0], (0x01, 0, 0), multifunction=True),
                              _hostdev(X710[1], (0x01, 0, 1))], os="linux")


@example("x710-shared-line")
def x710_shared_line(tmp: Path) -> DomainFacts:
    """Near miss of VA2002 and VA2004: the X710 cannot mask INTx and EHCI holds
    its line, but vfio-pci treats it as nointx (pin 0 to QEMU), so nothing
    requests the line."""
    return analyse(tmp, _x710_on_ehci_line("N"), _x710_domain())


@example("x710-shared-line-nointxmask")
def x710_shared_line_nointxmask(tmp: Path) -> DomainFacts:
    """x710-shared-line with vfio_pci nointxmask=1: vfio_pci_core_enable skips
    the nointx quirk, the pin comes back, and both functions need IRQ 16
    to themselves."""
    return analyse(tmp, _x710_on_ehci_line("Y"), _x710_domain())


# --- real kernel states: the lab's captures ------------------------------------
#
# Where the lab (lab/captures, made by `make lab`; how, in
# lab/captures/ORIGIN.md) can make the state a rule is about, the example is
# that real guest kernel's /proc and /sys, read as it was captured, with the
# lab's domain XML. The hand-made trees above stay only where the lab cannot
# make the state: the GPU + HDMI audio remedies (VA1001/VA2001 naming both
# functions and their Windows hardware IDs need the real Navi 23 config dumps;
# the lab's edu has no HDMI audio function), conventional PCI devices with PCI
# PM 1.0/1.1 (VA2002/VA2003: QEMU emulates none), an Intel X710 (one of
# vfio-pci's nointx IDs; QEMU emulates none), guest topologies (VA4xxx,
# VA5xxx: libvirt XML, not a host state), a missing device and a 64-byte
# config read (VA8001/VA8002). Posted interrupts cannot be made either
# (QEMU's intel-iommu has no PI): their platform comes from published real
# register values (tests/data/hosts/posted-*/PROVENANCE.md), laid over a lab
# capture that holds the device on MSI.

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
LAB_XML = REPO / "tests/data/domains/lab"
NOINTXMASK_A = REPO / "tests/data/domains/lab-nointxmask-a.xml"
NOINTXMASK_B = REPO / "tests/data/domains/lab-nointxmask-b.xml"
POSTED = REPO / "tests/data/hosts"


def lab(root: Path, xml: Path, *others: Path) -> DomainFacts:
    """The lab capture (or tree) at `root` with the domain `xml`; `others`:
    other defined domains, as advise gives them (the cross-domain check)."""
    hr = HostRoot(root)
    return gather_domain(parse_domain_xml(xml.read_text()), gather_host(hr),
                         DeviceCache(hr, PciIds(None)),
                         tuple(parse_domain_xml(o.read_text()) for o in others))


def lab_with_platform(tmp: Path, capture: str, platform: str, xml: Path,
                      set_files: dict[str, str] | None = None) -> DomainFacts:
    """`capture`'s devices and interrupts under `platform`'s published IOMMU
    registers and KVM parameters (and its command line, if it has one)."""
    root = capture_under_platform(tmp / "root", CAPTURES / capture, POSTED / platform)
    for rel, text in (set_files or {}).items():
        (root / rel).write_text(text)
    return lab(root, xml)


@example("lab-nointxmask-before")
def lab_nointxmask_before(tmp: Path) -> DomainFacts:
    """nointxmask=1, two edus bound to vfio-pci, nobody holds the line yet; the
    next moment (nointxmask-after) the kernel refused the second with EBUSY."""
    return lab(CAPTURES / "nointxmask-before", LAB_XML / "shared.xml")


@example("lab-nointxmask-after")
def lab_nointxmask_after(tmp: Path) -> DomainFacts:
    """The moment after: the first edu holds IRQ 23, the second got EBUSY."""
    return lab(CAPTURES / "nointxmask-after", LAB_XML / "shared.xml")


@example("lab-nointxmask-one-device")
def lab_nointxmask_one_device(tmp: Path) -> DomainFacts:
    """Near miss: nointxmask=1, but the domain assigns one of the two edus."""
    return lab(CAPTURES / "nointxmask-before", NOINTXMASK_A)


@example("lab-nointxmask-two-domains")
def lab_nointxmask_two_domains(tmp: Path) -> DomainFacts:
    """nointxmask=1; domain a assigns one edu, defined domain b the other."""
    return lab(CAPTURES / "nointxmask-before", NOINTXMASK_A, NOINTXMASK_B)


@example("lab-shared")
def lab_shared(tmp: Path) -> DomainFacts:
    """Near miss: the same two edus on IRQ 23 with masking on, both holding it."""
    return lab(CAPTURES / "shared", LAB_XML / "shared.xml")


@example("lab-shared-two-domains")
def lab_shared_two_domains(tmp: Path) -> DomainFacts:
    """Near miss: the two edus in two defined domains, masking on."""
    return lab(CAPTURES / "shared", NOINTXMASK_A, NOINTXMASK_B)


@example("lab-nomsi")
def lab_nomsi(tmp: Path) -> DomainFacts:
    """pci=nomsi: MSI refused with EINVAL, the edu on vfio-intx."""
    return lab(CAPTURES / "nomsi-2", LAB_XML / "edu.xml")


@example("lab-stays-intx")
def lab_stays_intx(tmp: Path) -> DomainFacts:
    """Near miss of pci=nomsi: the MSI-capable edu kept on INTx by its user,
    on a host that allows MSI."""
    return lab(CAPTURES / "stays-intx-4", LAB_XML / "edu.xml")


@example("lab-intremap-off")
def lab_intremap_off(tmp: Path) -> DomainFacts:
    """intremap=off with allow_unsafe_interrupts=1; the IOMMU itself on."""
    return lab(CAPTURES / "intremap-off", LAB_XML / "modes.xml")


@example("lab-modes")
def lab_modes(tmp: Path) -> DomainFacts:
    """Near miss of intremap-off: the same devices and modes, remapping on."""
    return lab(CAPTURES / "modes", LAB_XML / "modes.xml")


# VA3002 and VA3008 split the lab's two remapping states by the value of
# vfio_iommu_type1's allow_unsafe_interrupts. The lab booted intremap=off only
# with it set (vfio refuses the groups otherwise), so the other values are
# written into copies of the captures; the kernel reads it at each group
# attach (vfio_iommu_type1_attach_group), so the files are all that differs.
UNSAFE_PARAM = "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
UNSAFE_CMDLINE = " vfio_iommu_type1.allow_unsafe_interrupts=1"


def _without_unsafe_cmdline(root: Path) -> None:
    cmdline = root / "proc/cmdline"
    assert UNSAFE_CMDLINE in cmdline.read_text()
    cmdline.write_text(cmdline.read_text().replace(UNSAFE_CMDLINE, ""))


@example("intremap-off-unsafe-n")
def intremap_off_unsafe_n(tmp: Path) -> DomainFacts:
    """intremap-off with allow_unsafe_interrupts at its default, N (neither
    the command line nor the module sets it): the next start fails with EPERM."""
    root = _lab_copy(tmp, "intremap-off")
    _without_unsafe_cmdline(root)
    (root / UNSAFE_PARAM).write_text("N\n")
    return lab(root, LAB_XML / "modes.xml")


@example("intremap-off-type1-not-loaded")
def intremap_off_type1_not_loaded(tmp: Path) -> DomainFacts:
    """intremap-off before vfio_iommu_type1 is loaded, the command line
    silent on it: the value is whatever /etc/modprobe.d gives at load. (The
    copy keeps vfio_pci loaded; on a host modprobe loads the two together
    through vfio's softdep, which no rule here reads.)"""
    root = _lab_copy(tmp, "intremap-off")
    _without_unsafe_cmdline(root)
    shutil.rmtree(root / "sys/module/vfio_iommu_type1")
    return lab(root, LAB_XML / "modes.xml")


@example("modes-unsafe-y")
def modes_unsafe_y(tmp: Path) -> DomainFacts:
    """Near miss of intremap-off: remapping on (the modes capture) with
    allow_unsafe_interrupts=1 set anyway, which then changes nothing."""
    root = _lab_copy(tmp, "modes")
    (root / "proc/cmdline").write_text((root / "proc/cmdline").read_text().rstrip("\n")
                                       + UNSAFE_CMDLINE + "\n")
    (root / UNSAFE_PARAM).write_text("Y\n")
    return lab(root, LAB_XML / "modes.xml")


@example("remapping-unknown-unsafe-y")
def remapping_unknown_unsafe_y(tmp: Path) -> DomainFacts:
    """intremap-off with no MSI or IO-APIC row in /proc/interrupts and no
    intremap=off on the command line: remapping cannot be read, and
    allow_unsafe_interrupts=1 is set."""
    root = _lab_copy(tmp, "intremap-off")
    rows = (root / "proc/interrupts").read_text().splitlines()
    (root / "proc/interrupts").write_text("\n".join(
        r for r in rows if "MSI" not in r and "APIC" not in r) + "\n")
    cmdline = root / "proc/cmdline"
    cmdline.write_text(cmdline.read_text().replace(" intremap=off", ""))
    return lab(root, LAB_XML / "modes.xml")


@example("posted-xeon-server-msi")
def posted_xeon_server_msi(tmp: Path) -> DomainFacts:
    """Published Xeon server DMAR caps (PI set on every unit), APICv on; the
    lab's edu on MSI (modes capture, 00:04.0)."""
    return lab_with_platform(tmp, "modes", "posted-intel-xeon-server", LAB_XML / "modes.xml")


@example("posted-epyc-server-msi")
def posted_epyc_server_msi(tmp: Path) -> DomainFacts:
    """Published EPYC IOMMU features (GA and GAM_VAPIC) with kvm_amd loaded as
    avic=1 (the published tree has the default, N: before Linux 6.18 AVIC is
    opt-in, arch/x86/kvm/svm/svm.c); edu on MSI."""
    return lab_with_platform(tmp, "modes", "posted-amd-epyc-server", LAB_XML / "modes.xml",
                             {"sys/module/kvm_amd/parameters/avic": "Y\n"})


@example("posted-icl-laptop-msi")
def posted_icl_laptop_msi(tmp: Path) -> DomainFacts:
    """Near miss: published Ice Lake laptop DMAR caps, PI clear; edu on MSI."""
    return lab_with_platform(tmp, "modes", "posted-intel-icl-laptop", LAB_XML / "modes.xml")


@example("posted-xeon-server-intx")
def posted_xeon_server_intx(tmp: Path) -> DomainFacts:
    """Near miss: the posting Xeon, but the MSI-capable edu stays on INTx
    (stays-intx capture): INTx is never posted."""
    return lab_with_platform(tmp, "stays-intx-4", "posted-intel-xeon-server", LAB_XML / "edu.xml")


# --- near misses of the guest topology and routing rules (VA4xxx, VA5xxx) -----
#
# Each is one fact away from its rule's fires_on example: the same host tree
# or lab capture, the domain XML changed in the one place the check reads.

def _edu_on_i440fx() -> str:
    """The lab's edu.xml as an i440FX domain: pci-root, the edu on root slot 5."""
    xml = (LAB_XML / "edu.xml").read_text()
    for old, new in (("machine='pc-q35-7.2'", "machine='pc-i440fx-7.2'"),
                     ("model='pcie-root'/>", "model='pci-root'/>"),
                     ("bus='0x01' slot='0x00'", "bus='0x00' slot='0x05'")):
        assert old in xml, old
        xml = xml.replace(old, new)
    start = xml.index("    <controller type='pci' index='1'")
    return xml[:start] + xml[xml.index("</controller>", start) + len("</controller>\n"):]


@example("i440fx-msi-capable-conventional")
def i440fx_msi_capable_conventional(tmp: Path) -> DomainFacts:
    """Near miss of VA4001: i440FX with the lab's edu, a conventional PCI
    device that has MSI (kept on INTx by its user, stays-intx capture): not
    PCI Express, not INTx-only."""
    xml = tmp / "edu-i440fx.xml"
    xml.write_text(_edu_on_i440fx())
    return lab(CAPTURES / "stays-intx-4", xml)


@example("q35-intx-only")
def q35_intx_only(tmp: Path) -> DomainFacts:
    """Near miss of VA5002: i440fx-intx-only's host and NEC OHCI at the same
    guest slot, on a Q35 machine."""
    host = Host(devices=_legacy_pci(nec_irq=17), interrupts=_ir_interrupts({}, gpu=False))
    return analyse(tmp, host, domain_xml("oldbox", [_hostdev(NEC, (0x00, 0x06, 0))], os="win7"))


@example("gpu-audio-root-bus-slot")
def gpu_audio_root_bus_slot(tmp: Path) -> DomainFacts:
    """Near miss of VA4002: gpu-audio-split put both functions at slot 0 of
    two buses; here both are at slot 5 of one bus (pcie.0), .0 with
    multifunction='on' and .1."""
    return analyse(tmp, _both_on_msi_host(), domain_xml("win11", [
        _hostdev(GPU, (0x00, 0x05, 0), multifunction=True), _hostdev(AUDIO, (0x00, 0x05, 1))]))


@example("split-irqchip-msi")
def split_irqchip_msi(tmp: Path) -> DomainFacts:
    """Near miss of VA4003: <ioapic driver='qemu'/>, both functions on vfio-msi."""
    return analyse(tmp, _both_on_msi_host(),
                   domain_xml("win11", gpu_audio_hostdevs(), features="    <ioapic driver='qemu'/>\n"))


@example("guest-line-next-slot-q35")
def guest_line_next_slot_q35(tmp: Path) -> DomainFacts:
    """Near miss of VA5001: guest-line-shared-q35 with the e1000 one root slot
    further (slot 4): Q35 routes slot 4 pin A to PIRQE, GSI 20, not the
    audio's PIRQH (intx-routing.md)."""
    e1000 = E1000_ON_ROOT_SLOT_3.replace("slot='0x03'", "slot='0x04'")
    return analyse(tmp, _audio_on_own_intx_host(),
                   domain_xml("win11", gpu_audio_hostdevs() + [e1000]))


@example("guest-line-bridge-q35")
def guest_line_bridge_q35(tmp: Path) -> DomainFacts:
    """Near miss of VA5001: the audio on INTx at GSI 23 (PIRQH), and a
    pcie-to-pci-bridge behind root port 00:03.0 whose pin A routes there too.
    The bridge's only interrupt is its SHPC hotplug controller, which has
    MSI (QEMU hw/pci-bridge/pcie_pci_bridge.c msi_init, msi=auto) and which
    Linux's shpchp enables: not a sharer that costs the audio anything."""
    bridge = """    <controller type='pci' index='5' model='pcie-root-port'>
      <target chassis='5' port='0x18'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </controller>
    <controller type='pci' index='6' model='pcie-to-pci-bridge'>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </controller>
"""
    return analyse(tmp, _audio_on_own_intx_host(),
                   domain_xml("win11", gpu_audio_hostdevs() + [bridge]))


@example("pxb-pcie-port-on-root")
def pxb_pcie_port_on_root(tmp: Path) -> DomainFacts:
    """Near miss of VA5003: pxb-pcie-intx's domain with the e1000's root port
    plugged into pcie.0 (slot 6) instead of the expander bus, which stays."""
    old = "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>"
    assert old in PXB_PCIE_WITH_E1000
    moved = PXB_PCIE_WITH_E1000.replace(
        old, "<address type='pci' domain='0x0000' bus='0x00' slot='0x06' function='0x0'/>")
    return analyse(tmp, _both_on_msi_host(), domain_xml("win11", gpu_audio_hostdevs() + [moved]))


# --- start failures (VA3004-VA3007) -----------------------------------------
# Lab captures of a real Debian 6.1 guest kernel (lab/captures/ORIGIN.md):
# group-not-viable-1/-2 put a conventional pci-bridge (00:10.0), an edu
# (01:01.0) and a virtio-rng (01:02.0) in IOMMU group 1; in moment 1 the
# virtio-rng is on virtio-pci and the kernel refused the group to a VFIO user,
# in moment 2 both are on vfio-pci. iommu-off has no DMAR table (VT-d off in
# the firmware), no-vfio-pci never loaded vfio-pci.

LAB_KERNEL = "6.1.0-57-cloud-amd64"  # the lab guest's kernel (lab/fetch-debian-guest.sh)
EDU_BEHIND_BRIDGE, RNG_BEHIND_BRIDGE, EDU_ON_ROOT = "0000:01:01.0", "0000:01:02.0", "0000:00:03.0"


def _lab_domain(tmp: Path, hostdevs: list[tuple[str, str | None]]) -> Path:
    """A q35 domain assigning (BDF, managed) pairs; managed None leaves the
    attribute out (libvirt's default: no)."""
    xml = "".join(
        hostdev_xml_managed(bdf, managed) for bdf, managed in hostdevs)
    path = tmp / "domain.xml"
    path.write_text(domain_xml("lab-start", [xml], os="linux"))
    return path


def hostdev_xml_managed(bdf: str, managed: str | None) -> str:
    xml = _hostdev(bdf, None)
    attr = "" if managed is None else f" managed='{managed}'"
    return xml.replace(" managed='yes'", attr, 1)


def _lab_copy(tmp: Path, capture: str) -> Path:
    """A copy of a capture to edit (links kept as links)."""
    root = tmp / "root"
    shutil.copytree(CAPTURES / capture, root, symlinks=True)
    return root


@example("lab-iommu-off")
def lab_iommu_off(tmp: Path) -> DomainFacts:
    """No DMAR table (VT-d off in the firmware) though intel_iommu=on: no groups."""
    return lab(CAPTURES / "iommu-off", _lab_domain(tmp, [(EDU_ON_ROOT, "yes")]))


@example("iommu-off-intel-cmdline")
def iommu_off_intel_cmdline(tmp: Path) -> DomainFacts:
    """The firmware offers VT-d (the lab's real DMAR table), but the kernel was
    not told: the iommu-off capture with that table and no intel_iommu=on."""
    root = _lab_copy(tmp, "iommu-off")
    (root / "sys/firmware/acpi/tables/DMAR").write_bytes(
        (CAPTURES / "no-vfio-pci/sys/firmware/acpi/tables/DMAR").read_bytes())
    cmdline = root / "proc/cmdline"
    cmdline.write_text(cmdline.read_text().replace(" intel_iommu=on", ""))
    return lab(root, _lab_domain(tmp, [(EDU_ON_ROOT, "yes")]))


@example("lab-group-not-viable")
def lab_group_not_viable(tmp: Path) -> DomainFacts:
    """The edu behind the pci-bridge assigned; its group-mate on virtio-pci."""
    return lab(CAPTURES / "group-not-viable-1", _lab_domain(tmp, [(EDU_BEHIND_BRIDGE, "yes")]))


@example("lab-group-viable")
def lab_group_viable(tmp: Path) -> DomainFacts:
    """Near miss: the same group after the virtio-rng moved to vfio-pci."""
    return lab(CAPTURES / "group-not-viable-2", _lab_domain(tmp, [(EDU_BEHIND_BRIDGE, "yes")]))


@example("lab-group-both-assigned")
def lab_group_both_assigned(tmp: Path) -> DomainFacts:
    """Near miss: moment 1, but the domain assigns both functions managed:
    libvirt detaches both before QEMU opens the group."""
    return lab(CAPTURES / "group-not-viable-1",
               _lab_domain(tmp, [(EDU_BEHIND_BRIDGE, "yes"), (RNG_BEHIND_BRIDGE, "yes")]))


@example("group-not-viable-gpu-sibling")
def group_not_viable_gpu_sibling(tmp: Path) -> DomainFacts:
    """The GPU assigned alone; its HDMI audio, in the same group, left on snd_hda_intel."""
    from dataclasses import replace
    devices = [replace(d, driver="snd_hda_intel") if d.bdf == AUDIO else d
               for d in _gpu_audio(gpu_irq=45, audio_irq=51, gpu_msi=(45,))]
    return analyse(tmp, Host(devices=devices, interrupts=_ir_interrupts({})),
                   domain_xml("win11", [_hostdev(GPU, (1, 0, 0))]))


@example("group-bridge-pcieport")
def group_bridge_pcieport(tmp: Path) -> DomainFacts:
    """Near miss: on Debian 12's 6.1, the GPU's group also holds the switch
    port above it on pcieport (which sets driver_managed_dma, so a bridge
    driver that counts only from 5.19 is allowed) and the audio, driverless."""
    from dataclasses import replace
    devices = [replace(d, iommu_group=36) if d.bdf == "0000:04:00.0" else
               replace(d, driver=None) if d.bdf == AUDIO else d
               for d in _gpu_audio(gpu_irq=45, audio_irq=51, gpu_msi=(45,))]
    root = build(tmp / "root", Host(devices=devices, interrupts=_ir_interrupts({})))
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text("6.1.0-27-amd64\n")
    xml = tmp / "domain.xml"
    xml.write_text(domain_xml("win11", [_hostdev(GPU, (1, 0, 0))]))
    return lab(root, xml)


@example("lab-unmanaged-on-host-driver")
def lab_unmanaged_on_host_driver(tmp: Path) -> DomainFacts:
    """managed='no' for the virtio-rng, which virtio-pci holds."""
    return lab(CAPTURES / "group-not-viable-1", _lab_domain(tmp, [(RNG_BEHIND_BRIDGE, "no")]))


@example("lab-unmanaged-on-vfio")
def lab_unmanaged_on_vfio(tmp: Path) -> DomainFacts:
    """Near miss: managed='no' for the edu, which vfio-pci holds."""
    return lab(CAPTURES / "group-not-viable-2", _lab_domain(tmp, [(EDU_BEHIND_BRIDGE, "no")]))


@example("lab-no-vfio-pci-unmanaged")
def lab_no_vfio_pci_unmanaged(tmp: Path) -> DomainFacts:
    """vfio-pci never loaded; the edu (driverless) assigned without managed."""
    return lab(CAPTURES / "no-vfio-pci", _lab_domain(tmp, [(EDU_ON_ROOT, None)]))


def _no_vfio_pci_kernel(tmp: Path, module: bool) -> DomainFacts:
    """The no-vfio-pci capture with its kernel's release and module tree
    (modules.builtin without vfio-pci; the module file only with `module`)."""
    root = _lab_copy(tmp, "no-vfio-pci")
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(LAB_KERNEL + "\n")
    mods = root / "lib/modules" / LAB_KERNEL
    (mods / "kernel/drivers/vfio/pci").mkdir(parents=True)
    (mods / "modules.builtin").write_text("kernel/drivers/pci/pcie/portdrv.ko\n")
    if module:
        (mods / "kernel/drivers/vfio/pci/vfio-pci.ko").write_bytes(b"\x7fELF")
    return lab(root, _lab_domain(tmp, [(EDU_ON_ROOT, "yes")]))


@example("no-vfio-pci-module")
def no_vfio_pci_module(tmp: Path) -> DomainFacts:
    """vfio-pci neither loaded nor in /lib/modules/<release>; managed='yes'."""
    return _no_vfio_pci_kernel(tmp, module=False)


@example("no-vfio-pci-module-present")
def no_vfio_pci_module_present(tmp: Path) -> DomainFacts:
    """Near miss: not loaded, but modprobe (run by libvirt) would find it."""
    return _no_vfio_pci_kernel(tmp, module=True)
