"""Interrupt mode (VA1xxx): is the assigned device on INTx when it could use MSI?

Each rule sits next to its check: data (ID, slug, severity, texts,
MESSAGE_ID) plus a pure check over DomainFacts. No I/O here, and no libvirt:
the hook runs these inside libvirtd's start sequence.
"""

from __future__ import annotations

from typing import Iterator

from vfio_advisor.facts.model import AssignedDevice, DomainFacts
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules.base import SEED_ARTICLE, Rule, device_finding, register
from vfio_advisor.rules.base import message_id as _id
from vfio_advisor.rules.remedies import domain_xml_fix, guest_fix, guest_msi_remedy


def host_blocks_msi(facts: DomainFacts, dev: AssignedDevice) -> list[str]:
    """Why the host forbids MSI for this device (pci=nomsi, msi_bus=0), if it does."""
    pci = dev.device
    cmdline = facts.host.kernel.cmdline
    reasons = []
    if cmdline is not None and cmdline.pci_nomsi:
        reasons.append("the host kernel command line has pci=nomsi")
    if pci is not None and pci.msi_bus is False:
        reasons.append(f"{pci.address}/msi_bus is 0")
    if pci is not None:
        reasons += [f"bridge {bdf} has msi_bus 0" for bdf, ok in pci.upstream if ok is False]
    return reasons


def check_msi_capable_on_intx(facts: DomainFacts) -> Iterator[Finding]:
    for dev in facts.devices:
        pci, irq = dev.device, dev.interrupts
        if pci is None or not irq.on_intx or pci.supports_msi is not True:
            continue
        if host_blocks_msi(facts, dev):
            continue  # the guest cannot fix this; VA3001 says what can
        # /proc/interrupts counts per line, not per handler: on a shared line
        # part of the count may be the other devices'.
        whose = (f"host IRQ {irq.intx_irq}, shared with {', '.join(irq.shared_with)}, so part "
                 "of the count may be theirs" if irq.shared_with else f"host IRQ {irq.intx_irq}")
        evidence = {"proc/interrupts": f"IRQ {irq.intx_irq}: vfio-intx({dev.address})"}
        span = f" in {facts.host.sample_seconds:g} s" if facts.host.sample_seconds else ""
        if irq.intx_delta is not None and irq.intx_delta <= 0:
            # Sampled, and nothing new on INTx: an idle counter proves nothing
            # either way (vfio-pci's INTx handler runs only when the device
            # raises the line; no guest driver bound yet, or the device idle).
            # The static evidence stands; the sample is said to be inconclusive.
            if not irq.intx_count:
                continue
            seen = (f"the line has counted {irq.intx_count} interrupts ({whose}), but not one "
                    f"more{span}: the sample is inconclusive (no guest driver bound yet, or the "
                    "device was idle); sample again while the device is in use")
            evidence["sample"] = f"inconclusive: no INTx{span}"
        elif irq.intx_delta is not None:
            seen = f"the line's count rose by {irq.intx_delta}{span} ({whose})"
        else:
            if not irq.intx_count:
                continue
            seen = (f"the line has counted {irq.intx_count} interrupts ({whose}); not sampled, "
                    "use --sample 10 to confirm it is still rising")
        caps = [c for c, v in (("MSI", pci.config.msi), ("MSI-X", pci.config.msix)) if v]
        yield device_finding(
            "VA1001", facts, dev,
            f"{pci.name} supports {' and '.join(caps)} but the guest driver keeps it on "
            f"vfio-intx: {seen}.",
            guest_msi_remedy(facts, dev), evidence)


def check_no_agent_channel(facts: DomainFacts) -> Iterator[Finding]:
    """Only where a guest-side remedy applies (a VA1001 finding) and the
    domain XML has no agent channel: `fix --guest` needs one."""
    if facts.domain.agent_channel is not False:
        return
    on_intx = [f.subject for f in check_msi_capable_on_intx(facts)]
    if not on_intx:
        return
    yield device_finding(
        "VA1002", facts, None,
        f"The guest keeps {', '.join(on_intx)} on INTx, and the domain has no QEMU guest agent "
        "channel (org.qemu.guest_agent.0): `vfio-advisor fix --guest` cannot read or change the "
        "guest's setting.",
        evidence={"devices": ", ".join(on_intx)})


RULES: tuple[Rule, ...] = register(
    Rule("VA1001", "msi-capable-device-on-intx", Severity.WARNING,
         "Assigned device supports MSI but the guest keeps it on INTx",
         "vfio-pci starts every assigned device on INTx and switches to MSI or MSI-X only "
         "when the guest driver enables it. This device offers MSI or MSI-X, yet its "
         "vfio-intx handler keeps counting: the guest driver stayed on INTx. Each INTx "
         "needs a mask at the device, a trip through the guest and an unmask after the "
         "guest's EOI, and the line may be shared; this is the classic cause of crackling "
         "HDMI audio and stutter. MSI is an edge-triggered write with no masking and no "
         "sharing.",
         "Windows guests: set MSISupported=1 under the device's MessageSignaledInterrupt"
         "Properties registry key, for the GPU and its audio function, and again after "
         "driver updates. Linux guests: the driver's MSI module option "
         "(snd_hda_intel enable_msi=1).",
         _id("2cc7e8bd8bff4f1fa82900b760d8e515"), check_msi_capable_on_intx,
         fires_on=("lab-stays-intx", "gpu-audio-intx-windows", "gpu-audio-intx-windows-agent",
                   "gpu-audio-intx-linux", "intx-sampled-idle", "other-row-garbled"),
         silent_on=("lab-nomsi", "gpu-audio-msi", "intx-only-usb",
                    "config-truncated-40-bytes", "config-255-bytes", "capability-list-loops",
                    "intx-row-garbled", "proc-interrupts-empty"),
         documentation=(SEED_ARTICLE,), fix=guest_fix("plan_for")),
    Rule("VA1002", "no-guest-agent-channel", Severity.INFO,
         "The guest keeps a device on INTx and the domain has no guest agent channel",
         "The guest-side remedy of VA1001 (MSISupported, a Linux module option) can be read "
         "and applied from the host through the QEMU guest agent (`vfio-advisor fix --guest`), "
         "which libvirt reaches over a virtio-serial channel named org.qemu.guest_agent.0. "
         "This domain has none, so the change can only be made by hand inside the guest.",
         "Add <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
         "</channel> to the domain's <devices> (libvirt adds the virtio-serial controller and "
         "the socket path), restart the domain, and run qemu-ga in the guest (virtio-win's "
         "guest tools on Windows; the qemu-guest-agent package on Linux).",
         _id("3b43ccafe5454c9baf9623796af7d0b6"), check_no_agent_channel,
         fires_on=("lab-stays-intx", "gpu-audio-intx-windows"),
         silent_on=("gpu-audio-msi", "lab-nomsi", "gpu-audio-intx-windows-agent"),
         fix=domain_xml_fix("vfio_advisor.guest.channel:plan_agent_channel", stage=6),
         builds_on=("VA1001",)),
)
