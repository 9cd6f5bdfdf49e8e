"""Guest topology (VA4xxx): chipset, slots, irqchip.

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
from vfio_advisor.rules.remedies import domain_xml_fix
from vfio_advisor.rules.sharing import uses_intx

def check_i440fx_limits(facts: DomainFacts) -> Iterator[Finding]:
    # On a bus whose root is conventional (i440FX) QEMU keeps an assigned
    # device's PCIe capability "as-is" (hw/vfio/pci.c vfio_setup_pcie_cap; it
    # hides it only on Q35's conventional buses), but adds no extended
    # capability (vfio_add_ext_cap returns early off an Express bus).
    if facts.domain.chipset != "i440fx":
        return
    pcie = [d for d in facts.devices if d.device and d.device.config and d.device.config.pcie]
    intx_only = [d for d in facts.devices if d.device and d.device.supports_msi is False
                 and d.device.intx_pin not in (None, UNKNOWN)]
    if not pcie and not intx_only:
        return
    what = []
    if pcie:
        what.append("PCI Express devices (" + ", ".join(d.address for d in pcie) +
                    ") on a conventional PCI bus, where the guest sees none of their extended "
                    "capabilities (AER, Resizable BAR)")
    if intx_only:
        what.append("INTx-only devices (" + ", ".join(d.address for d in intx_only) + ")")
    yield device_finding(
        "VA4001", facts, None,
        f"Domain uses the i440FX machine type ({facts.domain.machine}) with "
        f"{' and '.join(what)}. i440FX routes every PCI INTx pin to four PIRQ links A-D, "
        "which SeaBIOS wires to only IRQ 10 and 11, so INTx devices share lines with about "
        "half of all others; Q35 has eight links A-H on GSI 16-23.",
        "Use a Q35 machine type (<type machine='q35'>) with pcie-root-port controllers for "
        "assigned devices. Windows may need its drivers re-detected after the change.",
        {"machine": facts.domain.machine or "?"})


def check_multifunction_split(facts: DomainFacts) -> Iterator[Finding]:
    by_slot: dict[str, list[AssignedDevice]] = {}
    for dev in facts.devices:
        if not facts.siblings(dev):
            # One function of its card here, or an SR-IOV VF: VFs of one PF
            # share host slots but each is a device of its own (its own
            # routing ID, no multifunction header; Linux 6.1 drivers/pci/iov.c
            # pci_iov_add_virtfn), so NFV hosts spread them over guest slots
            # and domains on purpose. DomainFacts.siblings leaves them out.
            continue
        by_slot.setdefault(dev.address.rsplit(".", 1)[0], []).append(dev)
    for slot, devs in sorted(by_slot.items()):
        if len(devs) < 2 or any(d.hostdev.guest is None for d in devs):
            continue  # one function, or libvirt will assign addresses
        guest_slots = {(d.hostdev.guest.address.domain, d.hostdev.guest.address.bus,
                        d.hostdev.guest.address.slot) for d in devs}
        first = min(devs, key=lambda d: d.hostdev.guest.address.function)
        where = ", ".join(f"{d.address} -> {d.guest_address}" for d in devs)
        if len(guest_slots) > 1:
            problem = "in different guest slots"
        elif first.hostdev.guest.address.function == 0 and not first.hostdev.guest.multifunction:
            problem = "in one guest slot, but function 0 lacks multifunction='on'"
        else:
            continue
        yield device_finding(
            "VA4002", facts, first,
            f"Functions of host device {slot} are {problem} ({where}). Drivers that expect "
            "the GPU and its HDMI audio as functions of one device (NVIDIA and AMD audio "
            "power management, some Windows drivers) misbehave.",
            f"Give all functions of {slot} the same guest bus and slot, with functions "
            "matching the host's, and multifunction='on' on function 0's <address>.",
            {"layout": where})


def check_split_irqchip_intx(facts: DomainFacts) -> Iterator[Finding]:
    # Since QEMU 5.1 a split irqchip keeps irqfd delivery in KVM and emulates
    # only the resample in userspace (accel/kvm/kvm-all.c
    # kvm_irqchip_assign_irqfd -> kvm_resample_fd_insert, kicked at the
    # userspace IOAPIC's EOI): the cost is one exit to QEMU per INTx, at EOI.
    if facts.domain.ioapic_driver != "qemu":
        return
    nointxmask = facts.host.kernel.nointxmask
    for dev in facts.devices:
        if dev.device is not None and uses_intx(dev, nointxmask):
            yield device_finding(
                "VA4003", facts, dev,
                f"{dev.device.name} uses INTx while the domain has <ioapic driver='qemu'/> "
                "(split irqchip). KVM still injects each INTx, but its EOI goes to QEMU's "
                "userspace IOAPIC, which only then lets vfio unmask the line: a trip through "
                "QEMU for every interrupt, adding latency.",
                "Enable MSI in the guest for this device, or drop <ioapic driver='qemu'/> "
                "unless it is needed (an emulated Intel IOMMU with intremap='on' needs it, "
                "as do more than 255 vCPUs).",
                {"features": "ioapic driver='qemu'"})


RULES: tuple[Rule, ...] = register(
    Rule("VA4001", "i440fx-with-pcie-or-intx-devices", Severity.WARNING,
         "i440FX machine with PCI Express or INTx-only assigned devices",
         "The i440FX machine has no PCI Express bus and no extended config space: QEMU "
         "keeps an assigned PCIe device's Express capability there, but none of its "
         "extended capabilities (AER, Resizable BAR). Its PIIX3 routes "
         "INTx to four PIRQ links (A-D), which SeaBIOS connects to IRQ 10 and 11 only, so "
         "INTx devices share guest lines. Q35 offers PCIe root ports and eight PIRQ links "
         "(A-H) on GSI 16-23.",
         "Move the domain to a Q35 machine type with pcie-root-port controllers. "
         "`vfio-advisor fix DOMAIN` gives the exact change when it can be verified.",
         _id("8481b99c0c144a55b34960720376d9ff"), check_i440fx_limits,
         fires_on=("i440fx-intx-only",), fix=domain_xml_fix("plan_va4001", stage=1),
         silent_on=("gpu-audio-msi", "i440fx-msi-capable-conventional"), scope="domain"),
    Rule("VA4002", "multifunction-device-split", Severity.WARNING,
         "Functions of one host device are split across guest slots",
         "The host device has several functions (typically a GPU's video and HDMI audio) "
         "that the guest sees at different slots, or in one slot without "
         "multifunction='on'. Guest drivers that pair the functions, or manage power for "
         "the whole device, then misbehave.",
         "Put every function in one guest slot, keep the host's function numbers, and set "
         "multifunction='on' on function 0. `vfio-advisor fix DOMAIN` gives the exact change.",
         _id("8c9ba1cd88aa40e6bcc9bdf336be2d01"), check_multifunction_split,
         fix=domain_xml_fix("plan_va4002", stage=2),
         fires_on=("gpu-audio-split",), silent_on=("gpu-audio-msi", "gpu-audio-root-bus-slot",
                                                  "sriov-vfs-own-guest-slots")),
    Rule("VA4003", "split-irqchip-with-intx", Severity.WARNING,
         "Split irqchip (<ioapic driver='qemu'/>) with an assigned device on INTx",
         "With a split irqchip the IOAPIC is emulated by QEMU in userspace. KVM still "
         "injects vfio's INTx through its irqfd, but the guest's EOI reaches QEMU, not "
         "KVM's resampler, so QEMU must kick the resample eventfd that lets vfio unmask "
         "the line: every INTx of the assigned device takes a trip through QEMU.",
         "Enable MSI for the device in the guest, or use <ioapic driver='kvm'/> when the "
         "split irqchip is not required. `vfio-advisor fix DOMAIN` gives the exact change.",
         _id("9efddfe88126490d88dde5ade87c69df"), check_split_irqchip_intx,
         fix=domain_xml_fix("plan_va4003", stage=5),
         fires_on=("split-irqchip-intx",), silent_on=("gpu-audio-msi", "split-irqchip-msi")),
)
