#!/usr/bin/env python3
"""Regenerate examples/demo-host/root/ from real captures (ORIGIN.md explains each step).

    python3 examples/demo-host/make_tree.py          # rewrite root/
    python3 examples/demo-host/make_tree.py --check  # exit 1 if root/ differs from what this writes

Config bytes come from tests/data/hosts/configs/ (see PROVENANCE.md there),
/proc/interrupts from tests/data/corpus/proc-interrupts/. Uses the public tree
builder vfio_advisor/testing/hosttree.py.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from vfio_advisor.facts.pci_config import parse_config_space  # noqa: E402
from vfio_advisor.testing.hosttree import (  # noqa: E402
    Device,
    Host,
    build,
    edit_interrupts,
    irq_row,
    load_capture,
    load_config,
    rename_handler,
)

QD4 = "huananzhi-x99-qd4_navi23_lspci-nnvvvxxxx.txt"  # Huananzhi X99-QD4 + Radeon RX 6600 (Navi 23)
SAMSUNG = "cap-phy32.txt"                              # Samsung PM174X NVMe (pciutils test dump)
PLX = "0005-80-00.0.lspci-x.txt"                       # PLX PEX8112 PCIe-to-PCI bridge (libvirt)
NEC = "0005-90-01.{}.lspci-x.txt"                      # NEC uPD720101 USB card, functions 0-2 (libvirt)
SBLIVE = "lkml-2001-08-14_sblive-emu10k1.txt"          # Creative SB Live! EMU10K1 (LKML attachment)
CAPTURE = "forum-post_2015-10-24_vfio-msi_8cpu.txt"    # 8-CPU host, interrupt remapping on

GPU, AUDIO, NVME = "0000:05:00.0", "0000:05:00.1", "0000:06:00.0"
SBLIVE_BDF, NEC_BDF = "0000:08:00.0", "0000:08:01.{}"

CMDLINE = ("BOOT_IMAGE=/boot/vmlinuz root=/dev/mapper/host-root ro quiet "
           "intel_iommu=on iommu=pt vfio-pci.ids=1002:73ff,1002:ab28,1102:0002,1033:0035,1033:00e0")

# Host IRQ numbers. 16-19 are the PCH's PIRQ A-D: the PEX8112 sits behind PCH
# root port 00:1c.0, so bus 08 slot 0 INTA -> INTA (16) and slot 1 INTA/B/C
# -> INTB/C/D (17/18/19) after the PCI-to-PCI swizzle. 28/29 are pins 4/5 of
# the Xeon's IIO IO-APIC (GSI base 24), behind CPU root ports 00:02.0 and 00:03.0.
GPU_MSI = 45                      # the capture's own vfio-msi[0] row, moved to the GPU
AUDIO_INTX = 28
NVME_INTX = 29
NVME_MSIX = range(46, 51)          # admin queue + 4 I/O queues (4 vCPUs)


def interrupts() -> str:
    text = load_capture(CAPTURE)
    # The captured guest GPU was 0000:07:00.0 on vfio-msi[0]; here it is the Navi 23.
    text = rename_handler(text, "vfio-msi[0](0000:07:00.0)", f"vfio-msi[0]({GPU})")
    rows = {
        AUDIO_INTX: irq_row(AUDIO_INTX, [448207, 0, 0, 0, 0, 0, 0, 0], "IR-IO-APIC", "fasteoi",
                            [f"vfio-intx({AUDIO})"], hwirq=AUDIO_INTX - 24),
    }
    io_queue_counts = [
        [31, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 412380, 0, 0, 0, 0, 0],
        [0, 0, 0, 388904, 0, 0, 0, 0],
        [0, 0, 0, 0, 401176, 0, 0, 0],
        [0, 0, 0, 0, 0, 396551, 0, 0],
    ]
    for index, (irq, counts) in enumerate(zip(NVME_MSIX, io_queue_counts)):
        rows[irq] = irq_row(irq, counts, "IR-PCI-MSI", "edge", [f"vfio-msix[{index}]({NVME})"])
    return edit_interrupts(text, rows)


# The live-state bits of a config space belong to the moment it was dumped:
# the Navi 23 audio under snd_hda_intel (MSI Enable+, INTx Disable+), the
# Samsung NVMe with no driver (MSI-X Enable-). The demo shows other moments,
# so these bits are set to what the kernel would show in them (Linux 6.1):
# vfio-pci on INTx has MSI off, and INTx Disable clear while the line is not
# masked (vfio_pci_intx_unmask); MSI-X on sets MSI-X Enable, and the PCI core
# sets INTx Disable with it (drivers/pci/msi/msi.c pci_intx_for_msi).
# vfio_advisor/facts/consistency.py checks that the tree agrees with itself.
PCI_COMMAND, INTX_DISABLE = 0x04, 0x400


def _on_intx(config: bytes) -> bytes:
    data = bytearray(config)
    msi = parse_config_space(config).msi
    control = int.from_bytes(data[msi.offset + 2:msi.offset + 4], "little") & ~0x1  # MSI Enable
    data[msi.offset + 2:msi.offset + 4] = control.to_bytes(2, "little")
    command = int.from_bytes(data[PCI_COMMAND:PCI_COMMAND + 2], "little") & ~INTX_DISABLE
    data[PCI_COMMAND:PCI_COMMAND + 2] = command.to_bytes(2, "little")
    return bytes(data)


def _on_msix(config: bytes) -> bytes:
    data = bytearray(config)
    msix = parse_config_space(config).msix
    control = int.from_bytes(data[msix.offset + 2:msix.offset + 4], "little") | 0x8000
    data[msix.offset + 2:msix.offset + 4] = control.to_bytes(2, "little")
    command = int.from_bytes(data[PCI_COMMAND:PCI_COMMAND + 2], "little") | INTX_DISABLE
    data[PCI_COMMAND:PCI_COMMAND + 2] = command.to_bytes(2, "little")
    return bytes(data)


def host() -> Host:
    qd4 = lambda bdf: load_config(QD4, bdf)  # noqa: E731
    devices = [
        # Bridges, as in the X99-QD4 dump (the tool reads only their msi_bus).
        Device("0000:00:02.0", qd4("00:02.0"), driver="pcieport", iommu_group=28, irq=None),
        Device("0000:03:00.0", qd4("03:00.0"), parent="0000:00:02.0", driver="pcieport",
               iommu_group=34, irq=None),
        Device("0000:04:00.0", qd4("04:00.0"), parent="0000:03:00.0", driver="pcieport",
               iommu_group=35, irq=None),
        Device("0000:00:03.0", qd4("00:03.0"), driver="pcieport", iommu_group=29, irq=None),
        Device("0000:00:1c.0", qd4("00:1c.0"), driver="pcieport", iommu_group=31, irq=None),
        # PLX PEX8112 moved from 0005:80:00.0 to 07:00.0 (the QD4's empty bus below 00:1c.0).
        Device("0000:07:00.0", load_config(PLX, "0005:80:00.0"), parent="0000:00:1c.0",
               driver=None, iommu_group=38, irq=None),

        # win11: Navi 23 GPU on vfio-msi (sysfs irq is the MSI vector, as kernels
        # before 6.2 report for MSI), its HDMI audio on vfio-intx.
        Device(GPU, qd4("05:00.0"), parent="0000:04:00.0", iommu_group=36,
               irq=GPU_MSI, msi_irqs=(GPU_MSI,)),
        Device(AUDIO, _on_intx(qd4("05:00.1")), parent="0000:04:00.0", iommu_group=36,
               irq=AUDIO_INTX),

        # nvme-linux: Samsung PM174X moved from 2e:00.0 to 06:00.0 (empty bus below 00:03.0).
        Device(NVME, _on_msix(load_config(SAMSUNG, "2e:00.0")), parent="0000:00:03.0", iommu_group=37,
               irq=NVME_INTX, msi_irqs=tuple(NVME_MSIX), msi_irq_mode="msix"),

        # oldbox (shut off): conventional PCI behind the PEX8112, one IOMMU group.
        Device(SBLIVE_BDF, load_config(SBLIVE, "00:0b.0"), parent="0000:07:00.0",
               iommu_group=38, irq=16),
        *[Device(NEC_BDF.format(fn), load_config(NEC.format(fn), f"0005:90:01.{fn}"),
                 parent="0000:07:00.0", iommu_group=38, irq=17 + fn)
          for fn in range(3)],
    ]
    return Host(devices=devices, interrupts=interrupts(), cmdline=CMDLINE)


def _same_tree(a: Path, b: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(a):
        rel = Path(dirpath).relative_to(a)
        other = b / rel
        if not other.is_dir() or os.path.islink(other):
            return False
        names = sorted(dirnames + filenames)
        if names != sorted(os.listdir(other)):
            return False
        for name in names:
            pa, pb = Path(dirpath) / name, other / name
            if os.path.islink(pa) or os.path.islink(pb):
                if not (os.path.islink(pa) and os.path.islink(pb)) or os.readlink(pa) != os.readlink(pb):
                    return False
            elif pa.is_file() and not filecmp.cmp(pa, pb, shallow=False):
                return False
        dirnames[:] = [d for d in dirnames if not os.path.islink(Path(dirpath) / d)]
    return True


def main(argv: list[str]) -> int:
    root = HERE / "root"
    if argv[1:] == ["--check"]:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = build(Path(tmp) / "root", host())
            if root.is_dir() and _same_tree(fresh, root) and _same_tree(root, fresh):
                return 0
            print(f"{root} differs from what {Path(__file__).name} writes; run it to regenerate",
                  file=sys.stderr)
            return 1
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    if root.exists():
        shutil.rmtree(root)
    build(root, host())
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
