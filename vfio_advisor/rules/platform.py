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
                _msi_blocked_remedy(blocked),
                {"cause": "; ".join(blocked)})


def _msi_blocked_remedy(blocked: list[str]) -> str:
    """Only the steps for the causes found: dropping pci=nomsi does not help a
    bridge whose msi_bus a quirk cleared, and the reverse."""
    steps = []
    if any("pci=nomsi" in b for b in blocked):
        steps.append("Remove pci=nomsi from the host kernel command line and reboot.")
    if any("msi_bus" in b for b in blocked):
        steps.append("Write 1 to the msi_bus files listed (echo 1 > /sys/bus/pci/devices/<BDF>/"
                     "msi_bus) if a quirk did not turn them off on purpose (drivers/pci/quirks.c "
                     "clears it for bridges with broken MSI: then leave it).")
    return " ".join(steps)


def check_unsafe_interrupts(facts: DomainFacts) -> Iterator[Finding]:
    if not facts.devices:
        return
    kernel, iommu = facts.host.kernel, facts.host.iommu
    reasons = []
    if kernel.allow_unsafe_interrupts or (iommu is not None and iommu.allow_unsafe_interrupts):
        reasons.append("vfio_iommu_type1 allow_unsafe_interrupts=1")
    # The effective state (facts.platform.iommu_state): the IR- chips first,
    # then the command line. intel_iommu=off does not turn Intel IR off
    # (drivers/iommu/intel/irq_remapping.c, 6.1), so only the evidence the
    # state was drawn from is quoted, never a guess from the command line.
    remapping = facts.host.interrupt_remapping
    if remapping is False:
        why = "; ".join(iommu.ir_evidence) if iommu is not None and iommu.ir_evidence else \
            "no IR- interrupt chips in /proc/interrupts"
        reasons.append(f"interrupt remapping is off ({why})")
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


def check_msi_posted(facts: DomainFacts) -> Iterator[Finding]:
    """VA3003: the host cannot count a device's MSI/MSI-X: they are posted.

    INTx is never posted (only MSIs go through the IRTE that KVM's irq bypass
    rewrites: vmx_pi_update_irte, avic_pi_update_irte, Linux 6.1), so INTx
    devices and hosts that forbid MSI are left out."""
    posting = facts.host.posting
    if posting is None or not posting.host_cannot_count_msi:
        return
    for dev in facts.devices:
        pci, mode = dev.device, dev.interrupts.mode
        if pci is None:
            continue
        if mode not in ("msi", "msix"):
            if mode != "none" or pci.supports_msi is not True or host_blocks_msi(facts, dev):
                continue
        now = (f"its {mode.upper().replace('MSIX', 'MSI-X')} vectors" if mode in ("msi", "msix")
               else "its MSI/MSI-X vectors, once the guest enables them,")
        yield device_finding(
            "VA3003", facts, dev,
            f"The host cannot count the interrupts of {pci.name}: {now} "
            f"{'are' if posting.verdict == 'posted' else 'may be'} posted to the guest's vCPU "
            "(KVM irq bypass), so its vfio-msi/vfio-msix counters in /proc/interrupts stay "
            "flat while it works. vfio-advisor draws no conclusion (no interrupts, rates, "
            "storms, affinity) from those counters.",
            "Nothing to fix: posting is the fast path. Judge the device's interrupts inside "
            "the guest (/proc/interrupts or Device Manager).",
            {"posting": posting.verdict, "platform": "; ".join(posting.evidence)})


RULES: tuple[Rule, ...] = register(
    Rule("VA3001", "msi-disabled-on-host", Severity.WARNING,
         "MSI is disabled on the host for an assigned device",
         "The host kernel was told not to use MSI (pci=nomsi), or the device or a bridge "
         "above it has msi_bus set to 0, usually by a quirk. vfio-pci then cannot enable "
         "MSI or MSI-X when the guest asks, and the device stays on INTx.",
         "Remove pci=nomsi, or re-enable msi_bus where it is safe.",
         _id("20dde90bbadb4264a81b755407343dc1"), check_msi_disabled_on_host,
         fires_on=("lab-nomsi",), silent_on=("lab-stays-intx", "gpu-audio-msi")),
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
         fires_on=("lab-intremap-off",),
         silent_on=("lab-modes", "gpu-audio-msi"), scope="domain"),
    Rule("VA3003", "msi-posted-to-guest", Severity.INFO,
         "The host cannot count this device's MSIs: they are posted to the guest",
         "With posted interrupts (Intel VT-d PI with APICv, AMD AVIC with the IOMMU's guest "
         "vAPIC mode) KVM rewrites the IOMMU's interrupt remapping entry so an assigned "
         "device's MSI goes straight to the vCPU. The host's vfio-msi/vfio-msix handler "
         "never runs and its counter stays flat while the device works, so silence, rates "
         "and affinity of those vectors cannot be judged on the host. INTx is never posted.",
         "Nothing to fix. Look at the device's interrupts inside the guest.",
         _id("f754be5d62504d4786f8fcfc303f2e2d"), check_msi_posted,
         fires_on=("posted-xeon-server-msi", "posted-epyc-server-msi"),
         silent_on=("posted-icl-laptop-msi", "posted-xeon-server-intx")),
)
