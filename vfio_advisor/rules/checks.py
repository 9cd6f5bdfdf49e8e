"""The rules. Each is data (ID, slug, severity, texts, MESSAGE_ID) plus a pure
check over DomainFacts. No I/O here, and no libvirt: the hook runs these
inside libvirtd's start sequence.

ID families (thousands digit): 1 interrupt mode, 2 host INTx line sharing,
3 host platform, 4 guest topology, 8 coverage, 9 internal.
"""

from __future__ import annotations

from typing import Iterator

from vfio_advisor.facts.model import AssignedDevice, DomainFacts
from vfio_advisor.facts.guest_intx import (
    NOTE_PXB_PCIE, PINS, PIRQS, QEMU_MODEL_MSI, GuestFunction, free_line_addresses,
)
from vfio_advisor.facts.pci_config import UNKNOWN
from vfio_advisor import journal_fields as F
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.journal_fields import at
from vfio_advisor.rules.base import Rule, SEED_ARTICLE
from vfio_advisor.rules.base import message_id as _id
from vfio_advisor.rules.remedies import guest_msi_remedy



def _finding(rule_id: str, facts: DomainFacts, dev: AssignedDevice | None, message: str,
             remedy: str, evidence: dict[str, str] | None = None) -> Finding:
    return _BY_ID[rule_id].finding(facts.domain.name, dev.address if dev else None, message, remedy,
                                   dev.guest_address if dev else None, evidence or ())


# --- VA1xxx: interrupt mode -------------------------------------------------

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
        if irq.intx_delta is not None:
            if irq.intx_delta <= 0:
                continue  # sampled, and nothing new arrived on INTx
            span = f" in {facts.host.sample_seconds:g} s" if facts.host.sample_seconds else ""
            seen = f"the line's count rose by {irq.intx_delta}{span} ({whose})"
        else:
            if not irq.intx_count:
                continue
            seen = (f"the line has counted {irq.intx_count} interrupts ({whose}); not sampled, "
                    "use --sample 10 to confirm it is still rising")
        caps = [c for c, v in (("MSI", pci.config.msi), ("MSI-X", pci.config.msix)) if v]
        yield _finding(
            "VA1001", facts, dev,
            f"{pci.name} supports {' and '.join(caps)} but the guest driver keeps it on "
            f"vfio-intx: {seen}.",
            guest_msi_remedy(facts, dev),
            {"proc/interrupts": f"IRQ {irq.intx_irq}: vfio-intx({dev.address})"})


# --- VA2xxx: host INTx lines ------------------------------------------------

def _uses_intx(dev: AssignedDevice) -> bool:
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
        if dev.device is None or not irq.shared_with or not _uses_intx(dev):
            continue
        if dev.intx_masking(nointxmask).supported is not True and not irq.on_intx:
            continue  # VA2002/VA2003 speak about this one
        now = "is on" if irq.on_intx else "has only INTx and will use"
        yield _finding(
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
        yield _finding(
            rule_id, facts, dev, message,
            f"Free host IRQ {irq.intx_irq}: unbind or disable {holders} before starting the "
            "VM, or move the card to a slot with its own line (check /proc/interrupts after "
            "moving). The kernel log shows \"genirq: Flags mismatch irq N\" when this happens.",
            {"proc/interrupts": f"IRQ {irq.intx_irq}: {holders}", "intx masking": masking.evidence})


def check_exclusive_line_required(facts: DomainFacts) -> Iterator[Finding]:
    return _exclusive_line_findings(facts, False, "VA2002")


def check_intx_masking_unproven(facts: DomainFacts) -> Iterator[Finding]:
    return _exclusive_line_findings(facts, None, "VA2003")


# --- VA3xxx: host platform --------------------------------------------------

def check_msi_disabled_on_host(facts: DomainFacts) -> Iterator[Finding]:
    for dev in facts.devices:
        pci = dev.device
        if pci is None or pci.supports_msi is not True:
            continue
        blocked = host_blocks_msi(facts, dev)
        if blocked:
            yield _finding(
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
        yield _finding(
            "VA3002", facts, None,
            f"Assigned devices run without MSI isolation: {'; '.join(reasons)}. A guest can "
            "make its device write forged MSI messages and inject interrupts into the host "
            "or other guests.",
            "Enable interrupt remapping (VT-d/AMD-Vi \"interrupt remapping\" in firmware; "
            "no intremap=off) and set vfio_iommu_type1 allow_unsafe_interrupts=0. Keep it on "
            "only for hosts that run trusted guests and lack remapping hardware.",
            {"kernel": "; ".join(reasons)})


# --- VA4xxx: guest topology -------------------------------------------------

def check_i440fx_limits(facts: DomainFacts) -> Iterator[Finding]:
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
                    ") on a conventional PCI bus, where they lose their Express capability")
    if intx_only:
        what.append("INTx-only devices (" + ", ".join(d.address for d in intx_only) + ")")
    yield _finding(
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
        yield _finding(
            "VA4002", facts, first,
            f"Functions of host device {slot} are {problem} ({where}). Drivers that expect "
            "the GPU and its HDMI audio as functions of one device (NVIDIA and AMD audio "
            "power management, some Windows drivers) misbehave.",
            f"Give all functions of {slot} the same guest bus and slot, with functions "
            "matching the host's, and multifunction='on' on function 0's <address>.",
            {"layout": where})


def check_split_irqchip_intx(facts: DomainFacts) -> Iterator[Finding]:
    if facts.domain.ioapic_driver != "qemu":
        return
    for dev in facts.devices:
        if dev.device is not None and _uses_intx(dev):
            yield _finding(
                "VA4003", facts, dev,
                f"{dev.device.name} uses INTx while the domain has <ioapic driver='qemu'/> "
                "(split irqchip). Each INTx then goes through QEMU's userspace IOAPIC instead "
                "of KVM's irqfd resampler, adding exits and latency to every interrupt.",
                "Enable MSI in the guest for this device, or drop <ioapic driver='qemu'/> "
                "unless it is needed (it is for >255 vCPUs with an emulated IOMMU).",
                {"features": "ioapic driver='qemu'"})


# --- VA5xxx: guest INTx routing ---------------------------------------------

def _describe(fn: GuestFunction, facts: DomainFacts) -> str:
    if fn.kind == "hostdev":
        dev = next((d for d in facts.devices if d.address == fn.host_address), None)
        name = dev.device.name if dev is not None and dev.device is not None else "?"
        return f"{fn.guest_address} (assigned {fn.host_address} {name})"
    return f"{fn.guest_address} ({fn.model})"


def _msi_sharer(fn: GuestFunction, facts: DomainFacts) -> bool:
    """Does this sharer normally leave the line for MSI once its driver loads?"""
    if fn.kind == "hostdev":
        dev = next((d for d in facts.devices if d.address == fn.host_address), None)
        return bool(dev and dev.device and dev.device.supports_msi is True
                    and not dev.interrupts.on_intx)
    return fn.model in QEMU_MODEL_MSI


def check_guest_line_shared(facts: DomainFacts) -> Iterator[Finding]:
    gmap = facts.guest_intx
    for fn in gmap.functions:
        if fn.kind != "hostdev" or not fn.routed or not fn.pin:
            continue
        costly = [s for s in gmap.sharers(fn) if not _msi_sharer(s, facts)]
        if not costly:
            continue  # only MSI-capable functions share it: they leave once their drivers load
        dev = next(d for d in facts.devices if d.address == fn.host_address)
        if dev.interrupts.mode in ("msi", "msix"):
            continue  # running on MSI now: the guest line carries nothing of it
        line = f"IRQ {fn.irq}" if gmap.chipset == "i440fx" else f"GSI {fn.irq}"
        others = ", ".join(_describe(s, facts) for s in costly)
        free = free_line_addresses(gmap, fn)
        if free:
            addr, free_line = free[0]
            where = (f"Moving it to guest address {addr} (slot 0x{addr.slot:02x} on the root bus, "
                     f"or behind a pcie-root-port placed there) would give it "
                     f"{'GSI' if gmap.chipset == 'q35' else 'IRQ'} {free_line} alone: "
                     f"<address type='pci' domain='0x0000' bus='0x00' slot='0x{addr.slot:02x}' "
                     "function='0x0'/>.")
        elif gmap.chipset == "i440fx":
            where = ("On i440FX no guest address gives it a line of its own: every INTx "
                     "device shares IRQ 10 or 11. Use Q35, or MSI in the guest.")
        else:
            where = "No free root-bus slot gives it an unused line; use MSI in the guest."
        mode = ("it is on INTx now" if dev.interrupts.on_intx else
                "this costs only while its guest driver uses INTx"
                if dev.device is not None and dev.device.supports_msi is True
                else "it has no MSI, so it always uses INTx")
        yield _finding(
            "VA5001", facts, dev,
            f"In the guest, {fn.guest_address} (pin {fn.pin_letter}, PIRQ{PIRQS[fn.pirq]}) shares "
            f"{line} with {others}; {mode}.", where,
            {"guest line": f"{line} via PIRQ{PIRQS[fn.pirq]}, root slot {fn.root_slot} "
                           f"pin {PINS[fn.root_pin]}"})


def check_i440fx_two_irqs(facts: DomainFacts) -> Iterator[Finding]:
    gmap = facts.guest_intx
    if gmap.chipset != "i440fx":
        return
    intx_hostdevs = [f for f in gmap.functions if f.kind == "hostdev" and f.pin]
    if not intx_hostdevs:
        return
    by_irq: dict[int, list[str]] = {}
    for f in gmap.functions:
        if f.routed and f.pirq is not None:
            by_irq.setdefault(f.irq, []).append(f"{f.guest_address} ({f.model or f.host_address})")
    layout = "; ".join(f"IRQ {irq}: {', '.join(names)}" for irq, names in sorted(by_irq.items()))
    yield _finding(
        "VA5002", facts, None,
        f"i440FX gives every PCI INTx one of two guest IRQs: SeaBIOS wires PIRQ A and B to IRQ "
        f"10, C and D to IRQ 11. Here: {layout}.",
        "Q35 routes INTx to eight links on GSI 16-23 and lets you give an assigned device a "
        "line of its own: move the domain to a q35 machine type.",
        {"assigned INTx functions": ", ".join(str(f.guest_address) for f in intx_hostdevs)})


def check_intx_behind_pxb_pcie(facts: DomainFacts) -> Iterator[Finding]:
    for fn in facts.guest_intx.functions:
        if not fn.pin or not any(n == NOTE_PXB_PCIE for n in fn.notes):
            continue
        dev = next((d for d in facts.devices if d.address == fn.host_address), None)
        what = _describe(fn, facts)
        yield _finding(
            "VA5003", facts, dev,
            f"{what} signals INTx pin {fn.pin_letter} behind a pcie-expander-bus on Q35. QEMU "
            "routes it to a GSI the guest's ACPI tables do not name, so its INTx never "
            "reaches the guest driver; it works only with MSI or MSI-X.",
            "Move the device off the pcie-expander-bus (to a pcie-root-port on pcie.0), or "
            "make sure its guest driver uses MSI/MSI-X.",
            {"guest address": str(fn.guest_address)})


# --- VA8xxx: coverage -------------------------------------------------------

def check_hostdev_missing(facts: DomainFacts) -> Iterator[Finding]:
    for dev in facts.devices:
        if dev.device is None:
            yield _finding(
                "VA8001", facts, dev,
                f"Host device {dev.address} ({dev.problem}): config space, interrupt and "
                "IOMMU checks were skipped for it.",
                "Check the <source><address> of this <hostdev> against lspci -D on the host; "
                "a moved card or a BIOS change renumbers buses.",
                {"sysfs": f"sys/bus/pci/devices/{dev.address}: {dev.problem}"})


def check_facts_incomplete(facts: DomainFacts) -> Iterator[Finding]:
    for dev in facts.devices:
        if dev.device is not None and dev.device.unreadable:
            skipped = "; ".join(dev.device.unreadable)
            yield _finding(
                "VA8002", facts, dev,
                f"Some facts of {dev.address} could not be read, and checks that need them "
                f"were skipped: {skipped}.",
                "Run as root (reading all of config space needs CAP_SYS_ADMIN).",
                {"unreadable": skipped})
    if facts.devices and facts.host.interrupts_problem:
        yield _finding(
            "VA8002", facts, None,
            f"Host interrupts could not be read ({facts.host.interrupts_problem}); interrupt "
            "mode and line sharing were not checked.",
            "Run where /proc/interrupts is readable (not under ProcSubset=pid).",
            {"proc/interrupts": facts.host.interrupts_problem})


RULES: tuple[Rule, ...] = (
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
         fires_on=("gpu-audio-intx-windows", "gpu-audio-intx-linux"),
         silent_on=("gpu-audio-msi", "intx-sampled-idle", "intx-only-usb"),
         documentation=(SEED_ARTICLE,)),
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
    Rule("VA4001", "i440fx-with-pcie-or-intx-devices", Severity.WARNING,
         "i440FX machine with PCI Express or INTx-only assigned devices",
         "The i440FX machine has no PCI Express bus, so assigned PCIe devices appear as "
         "conventional PCI devices without their Express capability. Its PIIX3 routes "
         "INTx to four PIRQ links (A-D), which SeaBIOS connects to IRQ 10 and 11 only, so "
         "INTx devices share guest lines. Q35 offers PCIe root ports and eight PIRQ links "
         "(A-H) on GSI 16-23.",
         "Move the domain to a Q35 machine type with pcie-root-port controllers.",
         _id("8481b99c0c144a55b34960720376d9ff"), check_i440fx_limits,
         fires_on=("i440fx-intx-only",), silent_on=("gpu-audio-msi",), scope="domain"),
    Rule("VA4002", "multifunction-device-split", Severity.WARNING,
         "Functions of one host device are split across guest slots",
         "The host device has several functions (typically a GPU's video and HDMI audio) "
         "that the guest sees at different slots, or in one slot without "
         "multifunction='on'. Guest drivers that pair the functions, or manage power for "
         "the whole device, then misbehave.",
         "Put every function in one guest slot, keep the host's function numbers, and set "
         "multifunction='on' on function 0.",
         _id("8c9ba1cd88aa40e6bcc9bdf336be2d01"), check_multifunction_split,
         fires_on=("gpu-audio-split",), silent_on=("gpu-audio-msi",)),
    Rule("VA4003", "split-irqchip-with-intx", Severity.WARNING,
         "Split irqchip (<ioapic driver='qemu'/>) with an assigned device on INTx",
         "With a split irqchip the IOAPIC is emulated by QEMU in userspace. KVM's irqfd "
         "resampler cannot then take INTx from vfio to the guest and back in the kernel, "
         "so every INTx of the assigned device takes a trip through QEMU.",
         "Enable MSI for the device in the guest, or use <ioapic driver='kvm'/> when the "
         "split irqchip is not required.",
         _id("9efddfe88126490d88dde5ade87c69df"), check_split_irqchip_intx,
         fires_on=("split-irqchip-intx",), silent_on=("gpu-audio-msi",)),
    Rule("VA5001", "guest-intx-line-shared", Severity.WARNING,
         "Assigned device shares its guest INTx line",
         "In the guest, the chipset routes each PCI INTx pin (after bridge swizzling) to a "
         "PIRQ link and an interrupt line. This assigned device's line is shared with other "
         "guest functions that keep using INTx, so each of its interrupts makes the guest "
         "poll them too, and theirs delay its EOI, which vfio-pci waits for before it "
         "unmasks the device on the host.",
         "Give the device a guest address whose line no other INTx function uses (the "
         "message names one), or make its guest driver use MSI.",
         _id("b325b388f18345aeb0da90a39d7df911"), check_guest_line_shared,
         fires_on=("guest-line-shared-q35",), silent_on=("gpu-audio-msi",), routing=True),
    Rule("VA5002", "i440fx-two-guest-irqs", Severity.INFO,
         "i440FX: all guest INTx share IRQ 10 and 11",
         "The i440FX/PIIX3 chipset has four PIRQ links, and SeaBIOS and OVMF connect them "
         "to IRQ 10 (A, B) and 11 (C, D). Every INTx function of the guest, emulated or "
         "assigned, shares one of those two lines; a Linux guest may rebalance links but "
         "has only 5, 10 and 11 to choose from.",
         "Use a Q35 machine type, whose eight links go to GSI 16-23.",
         _id("10a0dd1f359c47ff8030a1cacacc23d2"), check_i440fx_two_irqs,
         fires_on=("i440fx-intx-only",), silent_on=("gpu-audio-msi",), scope="domain", routing=True),
    Rule("VA5003", "intx-behind-pxb-pcie", Severity.WARNING,
         "INTx behind a pcie-expander-bus on Q35 never reaches the guest",
         "For devices behind a pxb-pcie (libvirt pcie-expander-bus) on Q35, QEMU's INTx "
         "wiring (pxb_map_irq_fn feeding ich9_lpc_map_irq) and the ACPI _PRT it gives the "
         "guest disagree: the guest listens on IRQ 10/11 through LNKA-D while QEMU raises "
         "GSI 20-23. Seen on QEMU 7.2; the code is the same in every QEMU with pxb-pcie "
         "(2.6 onwards) that was read, and no upstream fix is known.",
         "Keep INTx devices off the pcie-expander-bus, or use only devices whose guest "
         "drivers enable MSI or MSI-X.",
         _id("c598ab6075a043cea0a0c20cf5dd0d53"), check_intx_behind_pxb_pcie,
         fires_on=("pxb-pcie-intx",), silent_on=("gpu-audio-msi",), routing=True),
    Rule("VA8001", "hostdev-missing-on-host", Severity.WARNING,
         "Assigned device not found on this host: its checks were skipped",
         "The domain assigns a host PCI address that sysfs does not have. The domain will "
         "not start on this host as it is, and no host check could run for that device.",
         "Correct the <hostdev> source address.",
         _id("a88390d7eb3a46f6a0f72e25d39740cb"), check_hostdev_missing,
         fires_on=("hostdev-missing",), silent_on=("gpu-audio-msi",)),
    Rule("VA8002", "host-facts-incomplete", Severity.INFO,
         "Some host facts could not be read: the checks that need them were skipped",
         "The tool could not read part of what it needs, most often because it ran "
         "without root: an unprivileged read of a PCI config space returns only its first "
         "64 bytes, without the MSI, MSI-X and PCIe capabilities.",
         "Run as root.",
         _id("d92502904c274f179326771266394df5"), check_facts_incomplete,
         fires_on=("config-64-bytes",), silent_on=("gpu-audio-msi",)),
    Rule("VA9001", "internal-error", Severity.ERROR,
         "vfio-advisor hit an internal error",
         "A check or a sink of vfio-advisor failed unexpectedly. The other checks still "
         "ran. This is a bug in vfio-advisor, not in the domain.",
         "Report it with the message and, if possible, a snapshot "
         "(vfio-advisor snapshot -o report.tar.gz).",
         _id("00113ac7df114add87300056cd258a31"), None, scope="domain"),
    Rule("VA9002", "run-summary", Severity.INFO,
         "vfio-advisor checked a domain",
         f"vfio-advisor checked the domain {at(F.DOMAIN)} ({at(F.SOURCE)}) and "
         f"logged {at(F.FINDINGS)} findings for {at(F.DEVICES)} assigned PCI "
         "devices, one journal entry each. This entry is logged once per check, also when "
         "there is nothing to report.",
         f"Read the findings with journalctl -t {F.IDENTIFIER} {F.DOMAIN}=<name> -x.",
         _id("c77143cee7824d24965769fa0d8fa414"), None, scope="domain"),
)

_BY_ID = {r.id: r for r in RULES}
