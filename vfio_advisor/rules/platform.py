"""Host platform (VA3xxx): MSI and interrupt remapping on the host.

Each rule sits next to its check: data (ID, slug, severity, texts,
MESSAGE_ID) plus a pure check over DomainFacts. No I/O here, and no libvirt:
the hook runs these inside libvirtd's start sequence.
"""

from __future__ import annotations

from typing import Iterator

from vfio_advisor.facts.model import DomainFacts
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules.base import Rule, device_finding, register
from vfio_advisor.rules.base import message_id as _id
from vfio_advisor.rules.mode import host_blocks_msi


def check_msi_disabled_on_host(facts: DomainFacts) -> Iterator[Finding]:
    for dev in facts.devices:
        pci = dev.device
        if pci is None or pci.supports_msi is not True:
            continue
        blocked = host_blocks_msi(facts, dev)
        if blocked:
            yield device_finding(
                "VA3001", facts, dev,
                f"{pci.name} supports MSI but the host forbids it: {'; '.join(blocked)}. "
                "vfio-pci cannot give the guest MSI, so the device stays on INTx.",
                "Remove pci=nomsi from the host kernel command line, or write 1 to the "
                "msi_bus files listed (echo 1 > /sys/bus/pci/devices/<BDF>/msi_bus) if a "
                "quirk did not turn them off on purpose.",
                {"cause": "; ".join(blocked)})


def check_unsafe_interrupts(facts: DomainFacts) -> Iterator[Finding]:
    if not facts.devices:
        return
    kernel = facts.host.kernel
    reasons = []
    if kernel.allow_unsafe_interrupts:
        reasons.append("vfio_iommu_type1 allow_unsafe_interrupts=1")
    remapping = facts.host.interrupt_remapping
    if remapping is False:
        reasons.append("interrupt remapping is off (no IR- interrupt chips in /proc/interrupts"
                       + (", and the command line turns it off" if kernel.cmdline and kernel.cmdline.intremap_off else "") + ")")
    if reasons:
        yield device_finding(
            "VA3002", facts, None,
            f"Assigned devices run without MSI isolation: {'; '.join(reasons)}. A guest can "
            "make its device write forged MSI messages and inject interrupts into the host "
            "or other guests.",
            "Enable interrupt remapping (VT-d/AMD-Vi \"interrupt remapping\" in firmware; "
            "no intremap=off) and set vfio_iommu_type1 allow_unsafe_interrupts=0. Keep it on "
            "only for hosts that run trusted guests and lack remapping hardware.",
            {"kernel": "; ".join(reasons)})


RULES: tuple[Rule, ...] = register(
    Rule("VA3001", "msi-disabled-on-host", Severity.WARNING,
         "MSI is disabled on the host for an assigned device",
         "The host kernel was told not to use MSI (pci=nomsi), or the device or a bridge "
         "above it has msi_bus set to 0, usually by a quirk. vfio-pci then cannot enable "
         "MSI or MSI-X when the guest asks, and the device stays on INTx.",
         "Remove pci=nomsi, or re-enable msi_bus where it is safe.",
         _id("20dde90bbadb4264a81b755407343dc1"), check_msi_disabled_on_host,
         fires_on=("pci-nomsi",), silent_on=("gpu-audio-msi",)),
    Rule("VA3002", "unsafe-interrupt-remapping", Severity.WARNING,
         "Assigned devices without interrupt remapping: guests can forge MSIs",
         "Without interrupt remapping, an MSI is just a DMA write to the interrupt "
         "address range, and the IOMMU does not check its contents. A guest that "
         "controls an assigned device can make it write any MSI and inject interrupts "
         "into the host or other guests. vfio refuses such hosts unless "
         "vfio_iommu_type1 allow_unsafe_interrupts=1 is set.",
         "Turn on interrupt remapping in the firmware and kernel, and unset "
         "allow_unsafe_interrupts.",
         _id("cfe41719da2d463eae90ac6c90f91dea"), check_unsafe_interrupts,
         fires_on=("unsafe-interrupts",), silent_on=("gpu-audio-msi",), scope="domain"),
)
