"""Guest INTx routing (VA5xxx): PIRQ links and guest lines (the guest-irqs table).

Each rule sits next to its check: data (ID, slug, severity, texts,
MESSAGE_ID) plus a pure check over DomainFacts. No I/O here, and no libvirt:
the hook runs these inside libvirtd's start sequence.
"""

from __future__ import annotations

from typing import Iterator

from vfio_advisor.facts.guest_intx import (
    NOTE_PXB_PCIE, PINS, PIRQS, QEMU_MODEL_MSI, GuestFunction, free_line_addresses,
)
from vfio_advisor.facts.domain import PciAddress
from vfio_advisor.facts.model import AssignedDevice, DomainFacts
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules.base import Rule, device_finding, register
from vfio_advisor.rules.base import message_id as _id
from vfio_advisor.rules.mode import host_blocks_msi
from vfio_advisor.rules.remedies import domain_xml_fix


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


def _shared_line_devices(facts: DomainFacts) -> list[tuple[GuestFunction, AssignedDevice,
                                                          list[GuestFunction]]]:
    """(function, device, costly sharers) for every assigned INTx function
    whose guest line VA5001 reports as shared."""
    gmap = facts.guest_intx
    out = []
    for fn in gmap.functions:
        if fn.kind != "hostdev" or not fn.routed or not fn.pin:
            continue
        costly = [s for s in gmap.sharers(fn) if not _msi_sharer(s, facts)]
        if not costly:
            continue  # only MSI-capable functions share it: they leave once their drivers load
        dev = next(d for d in facts.devices if d.address == fn.host_address)
        if dev.interrupts.mode in ("msi", "msix"):
            continue  # running on MSI now: the guest line carries nothing of it
        out.append((fn, dev, costly))
    return out


def joint_free_addresses(facts: DomainFacts, flagged) -> dict[str, tuple[PciAddress, int, int]]:
    """Host BDF -> (root-bus address, line, functions moved) for the flagged
    devices, chosen jointly: no two cards get the same slot, no two INTx
    users the same line, and every line is one no current guest function
    uses. So any subset of these moves, all of them included, leaves each
    moved device alone on its line (a slot free for one device is free for
    its sharers too: one device at a time, every device on a line would be
    sent to the same slot and share again).

    A card moves whole (its assigned functions keep their function numbers):
    moving one function alone would split it (VA4002). A card that is split
    already, or lacks function 0 in the guest, gets no address: `fix` plans
    those."""
    gmap = facts.guest_intx
    fns = {f.host_address: f for f in gmap.functions if f.kind == "hostdev"}
    slots: set[int] = set()
    lines: set[int] = set()
    out: dict[str, tuple[PciAddress, int, int]] = {}
    for fn, dev, _ in flagged:
        if fn.host_address in out:
            continue  # moved with a sibling already
        unit = [fn] + [fns[s.address] for s in facts.siblings(dev) if s.address in fns]
        if len(unit) != 1 + len(facts.siblings(dev)):
            continue  # a function without a guest address yet
        where = {(u.guest_address.bus, u.guest_address.slot) for u in unit}
        if len(where) > 1 or (len(unit) > 1 and 0 not in {u.guest_address.function for u in unit}):
            continue
        # The functions whose INTx costs a sharer need a line of their own
        # (an MSI user's pin is not, as for the rule itself).
        need = [u for u in unit if u.routed and u.pin and not _msi_sharer(u, facts)]
        options = [{a.slot: line for a, line in free_line_addresses(gmap, u)} for u in need]
        common = set.intersection(*(set(o) for o in options)) if options else set()
        for slot in sorted(common - slots):
            want = [o[slot] for o in options]
            if len(set(want)) < len(want) or set(want) & lines:
                continue
            slots.add(slot)
            lines.update(want)
            for u in unit:
                line = next((o[slot] for v, o in zip(need, options) if v is u), None)
                func = u.guest_address.function if len(unit) > 1 else 0
                out[u.host_address] = (PciAddress(0, 0, slot, func), line, len(unit))
            break
    return out


def _guest_msi_clause(facts: DomainFacts, dev: AssignedDevice) -> tuple[bool, str]:
    """(MSI is a way out, the sentence that says why not). As VA2001's remedy:
    MSI in the guest only where the device has it and the host allows it
    (with pci=nomsi vfio-pci cannot enable MSI: lab capture nomsi-1, EINVAL)."""
    pci = dev.device
    if pci is None or pci.supports_msi is not True:
        return False, " The device has no MSI, so it needs a line of its own."
    blocked = host_blocks_msi(facts, dev)
    if blocked:
        return False, (" MSI would avoid the line, but the host forbids it ("
                       + "; ".join(blocked) + "; see VA3001).")
    return True, ""


def check_guest_line_shared(facts: DomainFacts) -> Iterator[Finding]:
    gmap = facts.guest_intx
    flagged = _shared_line_devices(facts)
    if not flagged:
        return
    moves = joint_free_addresses(facts, flagged)
    word = "GSI" if gmap.chipset == "q35" else "IRQ"
    for fn, dev, costly in flagged:
        line = f"{word} {fn.irq}"
        others = ", ".join(_describe(s, facts) for s in costly)
        if fn.host_address in moves:
            addr, free_line, card = moves[fn.host_address]
            what = ("Moving it" if card == 1 else
                    f"Moving its card (all {card} assigned functions, keeping their function "
                    "numbers, multifunction='on' on function 0)")
            where = (f"{what} to guest address {addr} (slot 0x{addr.slot:02x} on the root bus, "
                     f"or behind a pcie-root-port placed there) would give it "
                     f"{word} {free_line} alone: "
                     f"<address type='pci' domain='0x0000' bus='0x00' slot='0x{addr.slot:02x}' "
                     f"function='0x{addr.function:x}'/>.")
            if len(flagged) > 1:
                where += (" The other devices on shared lines are each given a different slot "
                          "and line, so these moves can be made together.")
        else:
            msi_ok, why_not = _guest_msi_clause(facts, dev)
            if free_line_addresses(gmap, fn):
                # A card with other assigned functions, or the free lines went
                # to the devices above: no address that holds for the whole domain.
                where = ("Give it a guest address whose line no other INTx function uses, "
                         "moving the card's functions together and devices that share a line "
                         "to different lines" + ("; or make its guest driver use MSI."
                                                 if msi_ok else "." + why_not))
            elif gmap.chipset == "i440fx":
                where = ("On i440FX no guest address gives it a line of its own: every INTx "
                         "device shares IRQ 10 or 11. Use Q35" +
                         (", or MSI in the guest." if msi_ok else "." + why_not))
            elif msi_ok:
                where = "No free root-bus slot gives it an unused line; use MSI in the guest."
            else:
                where = ("No free root-bus slot gives it an unused line; move the devices "
                         "sharing it elsewhere." + why_not)
        mode = ("it is on INTx now" if dev.interrupts.on_intx else
                "this costs only while its guest driver uses INTx"
                if dev.device is not None and dev.device.supports_msi is True
                else "it has no MSI, so it always uses INTx")
        yield device_finding(
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
    yield device_finding(
        "VA5002", facts, None,
        f"i440FX gives every PCI INTx one of two guest IRQs: SeaBIOS wires PIRQ A and B to IRQ "
        f"10, C and D to IRQ 11. Here: {layout}.",
        "Q35 routes INTx to eight links on GSI 16-23 and lets you give an assigned device a "
        "line of its own: move the domain to a q35 machine type.",
        {"assigned INTx functions": ", ".join(str(f.guest_address) for f in intx_hostdevs)})


def pxb_intx_lost(fn: GuestFunction, facts: DomainFacts) -> bool:
    """Is `fn` behind a pxb-pcie and would its guest driver rely on INTx there?

    Only those lose interrupts: the remedy's "devices whose guest drivers
    enable MSI or MSI-X" are fine behind the expander bus. Those are the QEMU
    models with MSI/MSI-X whose drivers use it (QEMU_MODEL_MSI: e1000e,
    virtio, xhci, ahci, hda, pcie-root-port ...), and an assigned device the
    host shows on vfio-msi/vfio-msix now (its guest driver enabled MSI). An
    assigned device not yet started, or on INTx, stays flagged: only its
    guest driver decides, and INTx-only ones (e1000, rtl8139, OHCI) always."""
    if not fn.pin or NOTE_PXB_PCIE not in fn.notes:
        return False
    if fn.kind == "hostdev":
        dev = next((d for d in facts.devices if d.address == fn.host_address), None)
        return dev is None or dev.interrupts.mode not in ("msi", "msix")
    return fn.model not in QEMU_MODEL_MSI


def check_intx_behind_pxb_pcie(facts: DomainFacts) -> Iterator[Finding]:
    for fn in facts.guest_intx.functions:
        if not pxb_intx_lost(fn, facts):
            continue
        dev = next((d for d in facts.devices if d.address == fn.host_address), None)
        what = _describe(fn, facts)
        yield device_finding(
            "VA5003", facts, dev,
            f"{what} signals INTx pin {fn.pin_letter} behind a pcie-expander-bus on Q35. QEMU "
            "routes it to a GSI the guest's ACPI tables do not name, so its INTx never "
            "reaches the guest driver; it works only with MSI or MSI-X.",
            "Move the device off the pcie-expander-bus (to a pcie-root-port on pcie.0), or "
            "make sure its guest driver uses MSI/MSI-X.",
            {"guest address": str(fn.guest_address)},
            # An emulated function has no host BDF: its guest address tells
            # two of them apart (in the journal, and in fix's re-analysis).
            guest_address=str(fn.guest_address))


RULES: tuple[Rule, ...] = register(
    Rule("VA5001", "guest-intx-line-shared", Severity.WARNING,
         "Assigned device shares its guest INTx line",
         "In the guest, the chipset routes each PCI INTx pin (after bridge swizzling) to a "
         "PIRQ link and an interrupt line. This assigned device's line is shared with other "
         "guest functions that keep using INTx, so each of its interrupts makes the guest "
         "poll them too, and theirs delay its EOI, which vfio-pci waits for before it "
         "unmasks the device on the host.",
         "Give the device a guest address whose line no other INTx function uses (the "
         "remedy names one per device, each on a different line), or, where the device has "
         "MSI and the host allows it, make its guest driver use MSI. `vfio-advisor fix DOMAIN` plans the moves for the whole domain, whole "
         "cards included, and verifies them.",
         _id("b325b388f18345aeb0da90a39d7df911"), check_guest_line_shared,
         fix=domain_xml_fix("plan_va5001", stage=4),
         fires_on=("guest-line-shared-q35",),
         silent_on=("gpu-audio-msi", "guest-line-next-slot-q35", "guest-line-bridge-q35"),
         routing=True),
    Rule("VA5002", "i440fx-two-guest-irqs", Severity.INFO,
         "i440FX: all guest INTx share IRQ 10 and 11",
         "The i440FX/PIIX3 chipset has four PIRQ links, and SeaBIOS and OVMF connect them "
         "to IRQ 10 (A, B) and 11 (C, D). Every INTx function of the guest, emulated or "
         "assigned, shares one of those two lines; a Linux guest may rebalance links but "
         "has only 5, 10 and 11 to choose from.",
         "Use a Q35 machine type, whose eight links go to GSI 16-23.",
         _id("10a0dd1f359c47ff8030a1cacacc23d2"), check_i440fx_two_irqs,
         fires_on=("i440fx-intx-only",), silent_on=("gpu-audio-msi", "q35-intx-only"),
         scope="domain", routing=True),
    Rule("VA5003", "intx-behind-pxb-pcie", Severity.WARNING,
         "INTx behind a pcie-expander-bus on Q35 never reaches the guest",
         "For devices behind a pxb-pcie (libvirt pcie-expander-bus) on Q35, QEMU's INTx "
         "wiring (pxb_map_irq_fn feeding ich9_lpc_map_irq) and the ACPI _PRT it gives the "
         "guest disagree: the guest listens on IRQ 10/11 through LNKA-D while QEMU raises "
         "GSI 20-23. Seen on QEMU 7.2; the code is the same in every QEMU with pxb-pcie "
         "(2.6 onwards) that was read, and no upstream fix is known.",
         "Keep INTx devices off the pcie-expander-bus, or use only devices whose guest "
         "drivers enable MSI or MSI-X. `vfio-advisor fix DOMAIN` gives the exact change.",
         _id("c598ab6075a043cea0a0c20cf5dd0d53"), check_intx_behind_pxb_pcie,
         fix=domain_xml_fix("plan_va5003", stage=3),
         fires_on=("pxb-pcie-intx",),
         silent_on=("gpu-audio-msi", "pxb-pcie-port-on-root", "pxb-pcie-e1000e",
                    "pxb-pcie-hostdev-msi"), routing=True),
)
