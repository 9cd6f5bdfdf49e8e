"""Host INTx line sharing (VA2xxx): what vfio-pci does with a line other handlers hold.

Each rule sits next to its check: data (ID, slug, severity, texts,
MESSAGE_ID) plus a pure check over DomainFacts. No I/O here, and no libvirt:
the hook runs these inside libvirtd's start sequence.
"""

from __future__ import annotations

from typing import Iterator

from vfio_advisor.facts.model import AssignedDevice, DomainFacts, own_handler
from vfio_advisor.facts.pci_config import UNKNOWN
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules.base import Rule, device_finding, register
from vfio_advisor.rules.mode import host_blocks_msi
from vfio_advisor.rules.base import message_id as _id


def uses_intx(dev: AssignedDevice, nointxmask: bool) -> bool:
    """On INTx now, or bound to stay there (no MSI or MSI-X at all, and a
    pin the guest sees: PciDevice.guest_pin)."""
    pci = dev.device
    if dev.interrupts.on_intx:
        return True
    return pci is not None and pci.supports_msi is False and bool(pci.guest_pin(nointxmask))


def check_host_line_shared(facts: DomainFacts) -> Iterator[Finding]:
    nointxmask = facts.host.kernel.nointxmask
    for dev in facts.devices:
        irq = dev.interrupts
        if dev.device is None or not irq.shared_with or not uses_intx(dev, nointxmask):
            continue
        if dev.intx_masking(nointxmask).supported is not True and not irq.on_intx:
            continue  # VA2002/VA2003 speak about this one
        now = "is on" if irq.on_intx else "has only INTx and will use"
        yield device_finding(
            "VA2001", facts, dev,
            f"{dev.device.name} {now} host IRQ {irq.intx_irq}, shared with "
            f"{', '.join(irq.shared_with)}. Each of their interrupts costs the guest a "
            "mask/unmask round trip, and theirs wait on the guest's EOI.",
            _shared_line_remedy(facts, dev),
            {"proc/interrupts": f"IRQ {irq.intx_irq}: {', '.join(irq.shared_with)}"})


def _shared_line_remedy(facts: DomainFacts, dev: AssignedDevice) -> str:
    """VA2001's remedy: MSI in the guest only where it can work (the device has
    MSI and the host allows it: with pci=nomsi vfio-pci cannot enable MSI,
    lab capture nomsi-1, EINVAL)."""
    line = dev.interrupts.intx_irq
    move = ("move the card to a slot whose line is free, or unbind the other devices on the "
            f"line (they are listed above; see /proc/irq/{line}/).")
    if dev.device.supports_msi is True and not host_blocks_msi(facts, dev):
        return "Enable MSI in the guest; otherwise " + move
    if dev.device.supports_msi is True:
        return ("MSI would avoid the line, but the host forbids it (" + "; ".join(
            host_blocks_msi(facts, dev)) + "; see VA3001). Until that changes, " + move)
    if dev.device.supports_msi is UNKNOWN:
        # Not "no MSI": the list that would say so could not be read (VA8002).
        return ("Whether the device has MSI is unknown (capabilities unreadable: "
                f"{dev.device.capabilities_unreadable}); if it has, enable MSI in the guest; "
                "otherwise " + move)
    return "The device has no MSI: " + move


def _exclusive_line_findings(facts: DomainFacts, want: bool | None, rule_id: str) -> Iterator[Finding]:
    nointxmask = facts.host.kernel.nointxmask
    for dev in facts.devices:
        pci, irq = dev.device, dev.interrupts
        if pci is None or not irq.shared_with:
            continue
        if not pci.guest_pin(nointxmask):
            # No pin the guest sees (unknown, none, an SR-IOV VF, or a
            # vfio_pci_nointx ID): QEMU never enables INTx for it
            # (hw/vfio/pci.c vfio_intx_enable returns at "if (!pin)", QEMU
            # 7.2), so vfio-pci never requests the line, held or not.
            continue
        masking = dev.intx_masking(nointxmask)
        if masking.supported is not want:
            continue
        if want is None and pci.capabilities_unreadable:
            # Unknown only because the capability list could not be read
            # (PCIe would settle it): VA8002 names that, VA2003 would guess.
            continue
        holders = ", ".join(irq.shared_with)
        verb = "holds" if len(irq.shared_with) == 1 else "hold"
        line = irq.intx_irq
        if _line_confirmed(facts, dev, line):
            if want is False:
                message = (f"{pci.name} cannot mask INTx at the device ({masking.evidence}), "
                           f"so vfio-pci needs host IRQ {line} to itself, but {holders} "
                           f"{verb} it. QEMU will fail to start the VM with "
                           "\"Device or resource busy\".")
            else:
                message = (f"{pci.name} may lack PCI 2.3 INTx masking ({masking.evidence}); "
                           f"if it does, vfio-pci needs host IRQ {line} to itself, "
                           f"but {holders} {verb} it, and the start fails with "
                           "\"Device or resource busy\".")
            remedy = (f"Free host IRQ {line}: unbind or disable {holders} before starting "
                      "the VM, or move the card to a slot with its own line (check "
                      "/proc/interrupts after moving). The kernel log shows \"genirq: Flags "
                      "mismatch irq N\" when this happens.")
        else:
            # Only sysfs irq names the line, and the row of that number holds
            # no handler of this device: the number may be the one firmware
            # left before the kernel routed the device (_line_words).
            if_line = (f"if that line is IRQ {line} ({_UNROUTED.format(line=line)}), "
                       f"{holders} {verb} it")
            if want is False:
                message = (f"{pci.name} cannot mask INTx at the device ({masking.evidence}), "
                           f"so vfio-pci needs its host line to itself; {if_line}, and QEMU "
                           "will fail to start the VM with \"Device or resource busy\".")
            else:
                message = (f"{pci.name} may lack PCI 2.3 INTx masking ({masking.evidence}); "
                           f"if it does, vfio-pci needs its host line to itself; {if_line}, "
                           "and the start fails with \"Device or resource busy\".")
            remedy = (f"Free its host line: if that is IRQ {line}, unbind or disable {holders} "
                      "before starting the VM; or move the card to a slot with its own line. "
                      f"Once the VM runs, /proc/interrupts shows the line as "
                      f"vfio-intx({dev.address}); when the start fails, the kernel log names "
                      "it in \"genirq: Flags mismatch irq N\".")
        own = dev.device.intx_masking(False).supported
        if nointxmask and pci.guest_pin(False) == 0:
            # Without nointxmask vfio_pci_core_enable applies the nointx
            # quirk to it instead (Linux 6.1.176): no pin, no INTx at all.
            remedy += (" Or load vfio-pci without nointxmask=1: vfio-pci then hides this "
                       "device's INTx (vfio_pci_nointx) and never requests the line; the guest "
                       "driver must use MSI or MSI-X.")
        elif nointxmask and own is not False:
            # nointxmask=1 alone may keep it off the shared line.
            remedy += (" Or load vfio-pci without nointxmask=1: " + (
                "this device has PCI 2.3 masking and could then share the line." if own else
                "if the device implements PCI 2.3 masking, it can then share the line."))
        yield device_finding(
            rule_id, facts, dev, message, remedy,
            {"proc/interrupts": f"IRQ {irq.intx_irq}: {holders}", "intx masking": masking.evidence})


def check_exclusive_line_required(facts: DomainFacts) -> Iterator[Finding]:
    return _exclusive_line_findings(facts, False, "VA2002")


def check_intx_masking_unproven(facts: DomainFacts) -> Iterator[Finding]:
    return _exclusive_line_findings(facts, None, "VA2003")


# Why two devices on one host line conflict at start, before anyone holds it:
# QEMU enables INTx for every assigned device with an INTx pin when it
# realizes it (hw/vfio/pci.c vfio_realize -> vfio_intx_enable, QEMU 7.2), and
# vfio-pci requests the host line with IRQF_SHARED only for devices that
# passed its PCI 2.3 masking probe (drivers/vfio/pci/vfio_pci_intrs.c
# vfio_intx_set_signal: "irqflags = (vdev->pci_2_3) ? IRQF_SHARED : 0", Linux
# 6.1); nointxmask=1 clears pci_2_3 for every device (vfio_pci_core.c). The
# second request_irq on the line then fails (kernel/irq/manage.c
# __setup_irq: "Flags mismatch", -EBUSY) whichever device comes first.
# Measured in the lab: captures nointxmask-before/-after.


def _conflict_lines(devs, nointxmask: bool):
    """{line: [(device, masking, evidence)]} for devices with a known host line."""
    lines: dict[int, list] = {}
    for dev in devs:
        line, evidence = dev.host_line(nointxmask)
        if line is None:
            continue
        lines.setdefault(line, []).append((dev, dev.intx_masking(nointxmask), evidence))
    return lines


# Why a sysfs irq number alone is not the line: see _line_words.
_UNROUTED = ("sysfs irq {line}; before vfio-pci enables a device the kernel has not "
             "routed it yet, so the number it gets may differ")


def _line_confirmed(facts: DomainFacts, dev: AssignedDevice, line: int | None) -> bool:
    """Is `line` the one the kernel routed for `dev`? Where a handler of the
    device's own sits on that row of /proc/interrupts: its vfio-intx, or its
    host driver's (model.own_handler), which got the line from
    pci_enable_device. Or where the device is open in a running VFIO user:
    a vfio handler of one of the domain's devices on vfio-pci shows QEMU
    runs it, and QEMU opens every assigned device at realize (hw/vfio/pci.c
    vfio_realize, QEMU 7.2), which enables it (vfio_pci_core_enable,
    Linux 6.1), so sysfs irq is the routed line. A row found only by the
    sysfs irq number, held by other handlers, confirms nothing: that number
    may be the stale one."""
    irq = dev.interrupts
    if line is None or dev.device is None:
        return False
    if irq.on_intx and irq.intx_irq == line:
        return True
    if dev.device.driver == "vfio-pci" and dev in facts.devices and any(
            d.device is not None and d.device.driver == "vfio-pci"
            and d.interrupts.mode in ("intx", "msi", "msix") for d in facts.devices):
        return True
    table = facts.host.interrupts
    row = table.by_irq().get(str(line)) if table is not None else None
    return row is not None and any(own_handler(h, dev.address, dev.device) for h in row.handlers)


def _line_words(line: int, confirmed: bool) -> str:
    """How sure the line number is. A line on which /proc/interrupts shows a
    handler of the device's own is the one in use (_line_confirmed); sysfs
    irq of a device nobody enabled yet is what firmware left in Interrupt
    Line, and the kernel may renumber it through ACPI _PRT when vfio-pci
    enables the device (acpi_pci_irq_enable, Linux 6.1: the lab's edus
    showed 11 before and got IO-APIC line 23, nointxmask-before/-after)."""
    if confirmed:
        return f"host IRQ {line}"
    return f"one host INTx line ({_UNROUTED.format(line=line)})"


def _already_held_by(dev: AssignedDevice, others) -> bool:
    """A vfio-intx of one of `others` holds dev's line now: VA2002 speaks."""
    return any(f"vfio-intx({o.address})" in dev.interrupts.shared_with for o in others)


def check_line_conflict_at_start(facts: DomainFacts) -> Iterator[Finding]:
    nointxmask = facts.host.kernel.nointxmask
    for line, members in _conflict_lines(facts.devices, nointxmask).items():
        if len(members) < 2:
            continue
        devs = [m[0] for m in members]
        if any(_already_held_by(d, devs) for d in devs):
            continue
        where = None  # the line's words, the same for each of its devices
        for dev, masking, evidence in members:
            if masking is None or masking.supported is not False:
                continue
            others = [d for d in devs if d is not dev]
            names = ", ".join(f"{o.address} ({o.device.name})" for o in others)
            if where is None:
                where = _line_words(line, all(_line_confirmed(facts, d, line) for d in devs))
            yield device_finding(
                "VA2004", facts, dev,
                f"{dev.device.name} cannot mask INTx ({masking.evidence}), so vfio-pci requests "
                f"its host line exclusively, and this domain also assigns {names} on "
                f"{where}. QEMU enables INTx for every assigned device at start, so the second "
                "request fails: the VM will not start (\"Device or resource busy\"; the kernel "
                "logs \"genirq: Flags mismatch irq N\").",
                _conflict_remedy(dev, masking, nointxmask, line),
                {"host line": "; ".join(e for _, _, e in members), "intx masking": masking.evidence,
                 "same line": ", ".join(d.address for d in devs)})


def check_line_conflict_between_domains(facts: DomainFacts) -> Iterator[Finding]:
    if not facts.others:
        return
    nointxmask = facts.host.kernel.nointxmask
    own = {d.address for d in facts.devices}
    for dev in facts.devices:
        line, evidence = dev.host_line(nointxmask)
        if line is None:
            continue
        masking = dev.intx_masking(nointxmask)
        clashes = []
        for other in facts.others:
            o = other.device
            if o.address in own or o.host_line(nointxmask)[0] != line:
                continue  # the same host device assigned twice is another matter
            o_masking = o.intx_masking(nointxmask)
            if masking.supported is False or o_masking.supported is False:
                clashes.append((other.domain, o, o_masking))
        if not clashes:
            continue
        doms = sorted({c[0] for c in clashes})
        what = "; ".join(f"domain {d} assigns {o.address} ({o.device.name if o.device else '?'})"
                         for d, o, _ in clashes)
        blocker = masking if masking.supported is False else clashes[0][2]
        where = _line_words(line, _line_confirmed(facts, dev, line) and all(
            _line_confirmed(facts, c[1], line) for c in clashes))
        yield device_finding(
            "VA2005", facts, dev,
            f"{dev.device.name} is on {where}, and {what} on the same line. A device there"
            f" cannot mask INTx ({blocker.evidence}), so vfio-pci needs the line to itself: "
            f"this domain and {', '.join(doms)} cannot run at the same time; the one started "
            "second fails with \"Device or resource busy\".",
            _conflict_remedy(dev, blocker, nointxmask, line) + " Or never run "
            f"{', '.join(doms)} together with this domain.",
            {"host line": evidence, "conflicting domains": ", ".join(doms),
             "intx masking": blocker.evidence})


def _conflict_remedy(dev: AssignedDevice, masking, nointxmask: bool, line: int) -> str:  # noqa: ARG001
    if nointxmask:
        hidden = ""
        if dev.device is not None and dev.device.guest_pin(False) == 0:
            hidden = (f", and vfio-pci hides the INTx of {dev.address} (vfio_pci_nointx: its "
                      "guest driver must use MSI or MSI-X)")
        return ("Load vfio-pci without nointxmask=1 (remove vfio_pci.nointxmask / "
                "options vfio-pci nointxmask=1), so that devices with PCI 2.3 masking can "
                f"share their host line{hidden}; or move one card to a slot on another line.")
    return (f"Move one of the cards to a slot on another host line (check /proc/interrupts "
            f"and sys/bus/pci/devices/<BDF>/irq after moving): {dev.address} cannot share "
            "its host line.")


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
         fires_on=("lab-shared", "gpu-audio-intx-windows", "intx-only-usb"),
         silent_on=("lab-stays-intx", "gpu-audio-msi", "intx-exclusive-line")),
    Rule("VA2002", "exclusive-intx-line-required", Severity.ERROR,
         "Device without INTx masking shares its host line: the VM will not start",
         "vfio-pci can share an INTx line only with devices that support PCI 2.3 INTx "
         "masking (Interrupt Disable in Command, Interrupt Status in Status). Without it, "
         "or with vfio_pci nointxmask=1, vfio-pci requests the line exclusively, and "
         "request_irq fails while other handlers hold it: QEMU reports \"Device or resource "
         "busy\" and the domain does not start. Devices that vfio-pci shows the guest "
         "without an INTx pin never request the line: SR-IOV VFs, and Intel X710/XL710/"
         "XXV710/X722 and X550 controllers unless nointxmask=1.",
         "Give the device a line of its own: unbind or disable the other devices on it, or "
         "move the card to another slot.",
         _id("b06b65a412664b1d9a16a16eacfbd1dc"), check_exclusive_line_required,
         fires_on=("lab-nointxmask-after", "nec-host-driver-shared-nointxmask",
                   "x710-shared-line-nointxmask"),
         silent_on=("lab-shared", "lab-nointxmask-before", "intx-exclusive-line",
                    "gpu-audio-intx-windows", "x710-shared-line", "sblive-shared-line")),
    Rule("VA2003", "intx-masking-unproven-on-shared-line", Severity.WARNING,
         "Conventional PCI device of unknown PCI 2.3 compliance on a shared host line",
         "Nothing in the config space of this conventional PCI device shows that it "
         "implements PCI 2.3 INTx masking, and its host line is shared. If it lacks "
         "masking, vfio-pci needs the line to itself and the start fails with \"Device or "
         "resource busy\". The kernel probes it at boot (it toggles Command bit 10 and reads "
         "it back) but shows the result nowhere; vfio-pci acts on it when it opens the device. "
         "A PCI PM 1.0 capability makes a device older than PCI 2.3 likely, not certain.",
         "If the VM fails to start with \"Device or resource busy\", free the line as "
         "VA2002 explains.",
         _id("fc898f30a0dc4aa9a807b7b1d5699ca1"), check_intx_masking_unproven,
         fires_on=("conventional-unknown-shared", "sblive-shared-line"),
         silent_on=("x710-shared-line-nointxmask", "intx-only-usb", "config-truncated-40-bytes")),
    Rule("VA2004", "intx-line-conflict-at-start", Severity.ERROR,
         "Two assigned devices on one host INTx line, one without masking: the VM will not start",
         "QEMU enables INTx for every assigned device when the VM starts, and vfio-pci "
         "requests the host line shared only for devices with PCI 2.3 INTx masking. With two "
         "of the domain's devices on one host line and one of them unable to mask (no PCI 2.3 "
         "masking, a kernel quirk, or vfio_pci nointxmask=1), the second request fails with "
         "EBUSY, although no other handler held the line before the start.",
         "Move one card to a slot on another host line, or let the devices mask INTx "
         "(drop vfio_pci nointxmask=1 where it is set).",
         _id("dd9ce298de3f4a4b83b1d2f5cbef8f52"), check_line_conflict_at_start,
         fires_on=("lab-nointxmask-before", "x710-shared-line-nointxmask"),
         silent_on=("lab-shared", "lab-nointxmask-after", "lab-nointxmask-one-device",
                    "x710-shared-line")),
    Rule("VA2005", "intx-line-conflict-between-domains", Severity.WARNING,
         "Devices of two defined domains on one host INTx line, one without masking",
         "Another defined domain assigns a device on the same host INTx line, and one of the "
         "two cannot mask INTx, so vfio-pci needs the line to itself. Each domain starts "
         "alone, but the one started second while the other runs fails with \"Device or "
         "resource busy\". Only advise, which sees every defined domain, can tell.",
         "Do not run the domains at once, move one card to a slot on another line, or let "
         "the devices mask INTx (drop vfio_pci nointxmask=1).",
         _id("6dedee52673c420ab65b34334b8c1048"), check_line_conflict_between_domains,
         fires_on=("lab-nointxmask-two-domains",),
         silent_on=("lab-shared-two-domains", "lab-nointxmask-one-device")),
)
