"""Host INTx line sharing (VA2xxx): what vfio-pci does with a line other handlers hold.

Each rule sits next to its check: data (ID, slug, severity, texts,
MESSAGE_ID) plus a pure check over DomainFacts. No I/O here, and no libvirt:
the hook runs these inside libvirtd's start sequence.
"""

from __future__ import annotations

from typing import Iterator

from vfio_advisor.facts.model import AssignedDevice, DomainFacts
from vfio_advisor.facts.pci_config import UNKNOWN
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules.base import Rule, device_finding, register
from vfio_advisor.rules.base import message_id as _id


def uses_intx(dev: AssignedDevice) -> bool:
    """On INTx now, or bound to stay there (no MSI or MSI-X at all)."""
    pci = dev.device
    if dev.interrupts.on_intx:
        return True
    return (pci is not None and pci.supports_msi is False
            and pci.intx_pin not in (None, UNKNOWN))


def check_host_line_shared(facts: DomainFacts) -> Iterator[Finding]:
    nointxmask = facts.host.kernel.nointxmask
    for dev in facts.devices:
        irq = dev.interrupts
        if dev.device is None or not irq.shared_with or not uses_intx(dev):
            continue
        if dev.intx_masking(nointxmask).supported is not True and not irq.on_intx:
            continue  # VA2002/VA2003 speak about this one
        now = "is on" if irq.on_intx else "has only INTx and will use"
        yield device_finding(
            "VA2001", facts, dev,
            f"{dev.device.name} {now} host IRQ {irq.intx_irq}, shared with "
            f"{', '.join(irq.shared_with)}. Each of their interrupts costs the guest a "
            "mask/unmask round trip, and theirs wait on the guest's EOI.",
            "Enable MSI in the guest if the device has it; otherwise move the card to a "
            "slot whose line is free, or unbind the other devices on the line "
            f"(they are listed above; see /proc/irq/{irq.intx_irq}/).",
            {"proc/interrupts": f"IRQ {irq.intx_irq}: {', '.join(irq.shared_with)}"})


def _exclusive_line_findings(facts: DomainFacts, want: bool | None, rule_id: str) -> Iterator[Finding]:
    nointxmask = facts.host.kernel.nointxmask
    for dev in facts.devices:
        pci, irq = dev.device, dev.interrupts
        if pci is None or pci.intx_pin in (None, UNKNOWN) or not irq.shared_with:
            continue
        masking = dev.intx_masking(nointxmask)
        if masking.supported is not want:
            continue
        holders = ", ".join(irq.shared_with)
        verb = "holds" if len(irq.shared_with) == 1 else "hold"
        if want is False:
            message = (f"{pci.name} cannot mask INTx at the device ({masking.evidence}), so "
                       f"vfio-pci needs host IRQ {irq.intx_irq} to itself, but {holders} "
                       f"{verb} it. QEMU will fail to start the VM with "
                       "\"Device or resource busy\".")
        else:
            message = (f"{pci.name} may lack PCI 2.3 INTx masking ({masking.evidence}); "
                       f"if it does, vfio-pci needs host IRQ {irq.intx_irq} to itself, "
                       f"but {holders} {verb} it, and the start fails with "
                       "\"Device or resource busy\".")
        yield device_finding(
            rule_id, facts, dev, message,
            f"Free host IRQ {irq.intx_irq}: unbind or disable {holders} before starting the "
            "VM, or move the card to a slot with its own line (check /proc/interrupts after "
            "moving). The kernel log shows \"genirq: Flags mismatch irq N\" when this happens.",
            {"proc/interrupts": f"IRQ {irq.intx_irq}: {holders}", "intx masking": masking.evidence})


def check_exclusive_line_required(facts: DomainFacts) -> Iterator[Finding]:
    return _exclusive_line_findings(facts, False, "VA2002")


def check_intx_masking_unproven(facts: DomainFacts) -> Iterator[Finding]:
    return _exclusive_line_findings(facts, None, "VA2003")


RULES: tuple[Rule, ...] = register(
    Rule("VA2001", "host-intx-line-shared", Severity.WARNING,
         "Assigned device's INTx line is shared on the host",
         "The device signals INTx on a host interrupt line that other devices' handlers "
         "also use. vfio-pci can share it only because the device masks INTx itself (PCI "
         "2.3), and every interrupt on the line makes the host check each device on it. "
         "The guest's interrupt latency now depends on the other devices.",
         "Use MSI in the guest if the device has it. Otherwise move the card to another "
         "slot or unbind the devices named in the message.",
         _id("b58599581c204d8abc1bf836a9641ebf"), check_host_line_shared,
         fires_on=("gpu-audio-intx-windows", "intx-only-usb"),
         silent_on=("gpu-audio-msi", "intx-exclusive-line")),
    Rule("VA2002", "exclusive-intx-line-required", Severity.ERROR,
         "Device without INTx masking shares its host line: the VM will not start",
         "vfio-pci can share an INTx line only with devices that support PCI 2.3 INTx "
         "masking (Interrupt Disable in Command, Interrupt Status in Status). Without it, "
         "or with vfio_pci nointxmask=1, vfio-pci requests the line exclusively, and "
         "request_irq fails while other handlers hold it: QEMU reports \"Device or resource "
         "busy\" and the domain does not start.",
         "Give the device a line of its own: unbind or disable the other devices on it, or "
         "move the card to another slot.",
         _id("b06b65a412664b1d9a16a16eacfbd1dc"), check_exclusive_line_required,
         fires_on=("sblive-shared-line",),
         silent_on=("intx-exclusive-line", "gpu-audio-intx-windows")),
    Rule("VA2003", "intx-masking-unproven-on-shared-line", Severity.WARNING,
         "Conventional PCI device of unknown PCI 2.3 compliance on a shared host line",
         "Nothing in the config space of this conventional PCI device shows that it "
         "implements PCI 2.3 INTx masking, and its host line is shared. If it lacks "
         "masking, vfio-pci needs the line to itself and the start fails with \"Device or "
         "resource busy\". The kernel tests this only when vfio-pci opens the device.",
         "If the VM fails to start with \"Device or resource busy\", free the line as "
         "VA2002 explains.",
         _id("fc898f30a0dc4aa9a807b7b1d5699ca1"), check_intx_masking_unproven,
         fires_on=("conventional-unknown-shared",),
         silent_on=("sblive-shared-line", "intx-only-usb")),
)
