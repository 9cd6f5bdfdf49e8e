"""Shared example hosts and domains, built from real dumps with hosttree:
the AMD Navi 23 GPU + HDMI audio of a Huananzhi X99-QD4 board (lspci dump in
tests/data/hosts/configs, see PROVENANCE.md), and libvirt domain XML that
assigns them. Used by the rule examples, the daemon scenarios and bench/."""

from __future__ import annotations

from vfio_advisor.testing.hosttree import Device, first_bytes, load_config

QD4 = "huananzhi-x99-qd4_navi23_lspci-nnvvvxxxx.txt"
GPU, AUDIO = "0000:05:00.0", "0000:05:00.1"


def x99_bridges() -> list[Device]:
    return [
        Device("0000:00:02.0", load_config(QD4, "00:02.0"), driver="pcieport", iommu_group=28, irq=None),
        Device("0000:03:00.0", load_config(QD4, "03:00.0"), parent="0000:00:02.0",
               driver="pcieport", iommu_group=34, irq=None),
        Device("0000:04:00.0", load_config(QD4, "04:00.0"), parent="0000:03:00.0",
               driver="pcieport", iommu_group=35, irq=None),
    ]


def gpu_audio_devices(gpu_irq: int, audio_irq: int, *, gpu_msi: tuple[int, ...] = (),
               audio_msi: tuple[int, ...] = (), config_bytes: int | None = None) -> list[Device]:
    def cfg(bdf: str) -> bytes:
        data = load_config(QD4, bdf)
        return first_bytes(data, config_bytes) if config_bytes else data
    return x99_bridges() + [
        Device(GPU, cfg("05:00.0"), parent="0000:04:00.0", iommu_group=36, irq=gpu_irq, msi_irqs=gpu_msi),
        Device(AUDIO, cfg("05:00.1"), parent="0000:04:00.0", iommu_group=36, irq=audio_irq,
               msi_irqs=audio_msi),
    ]




OS_IDS = {
    "windows": "http://microsoft.com/win/11",
    "win7": "http://microsoft.com/win/7",
    "linux": "http://debian.org/debian/12",
}


def hostdev_xml(source: str, guest: tuple[int, int, int] | None, multifunction: bool = False) -> str:
    d, b, sf = source.split(":")
    s, f = sf.split(".")
    xml = (f"    <hostdev mode='subsystem' type='pci' managed='yes'>\n"
           f"      <source><address domain='0x{d}' bus='0x{b}' slot='0x{s}' function='0x{f}'/></source>\n")
    if guest is not None:
        bus, slot, fn = guest
        mf = " multifunction='on'" if multifunction else ""
        xml += (f"      <address type='pci' domain='0x0000' bus='0x{bus:02x}' slot='0x{slot:02x}' "
                f"function='0x{fn:x}'{mf}/>\n")
    return xml + "    </hostdev>\n"


def domain_xml(name: str, hostdevs: list[str], *, os: str = "windows",
               machine: str = "pc-q35-7.2", features: str = "") -> str:
    if "q35" in machine:
        controllers = "    <controller type='pci' index='0' model='pcie-root'/>\n"
        for i in range(1, 5):
            mf = " multifunction='on'" if i == 1 else ""
            controllers += (f"    <controller type='pci' index='{i}' model='pcie-root-port'>\n"
                            f"      <target chassis='{i}' port='0x{0x0f + i:x}'/>\n"
                            f"      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' "
                            f"function='0x{i - 1:x}'{mf}/>\n"
                            "    </controller>\n")
    else:
        controllers = "    <controller type='pci' index='0' model='pci-root'/>\n"
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="{OS_IDS[os]}"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>8388608</memory>
  <vcpu placement='static'>4</vcpu>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
  </os>
  <features>
    <acpi/>
    <apic/>
{features}  </features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{controllers}{"".join(hostdevs)}  </devices>
</domain>
"""


def gpu_audio_hostdevs(split: bool = False) -> list[str]:
    """GPU and audio in one guest slot (function 0 multifunction='on'), or split."""
    if split:
        return [hostdev_xml(GPU, (0x03, 0, 0)), hostdev_xml(AUDIO, (0x04, 0, 0))]
    return [hostdev_xml(GPU, (0x03, 0, 0), multifunction=True), hostdev_xml(AUDIO, (0x03, 0, 1))]
