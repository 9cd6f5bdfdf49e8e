"""Plan verified domain XML changes for the findings that have one.

A rule has a domain XML fix when its `fix` names one of the planners below
(`Rule(..., fix=domain_xml_fix("plan_...", stage=N))`, rules/remedies.py).
For each such rule the planner computes one change (a list of `xmledit.Op`s)
on top of the changes accepted before it, re-analyses the result with the
same host facts, validates it with libvirt's schema and test driver
(verify.py), and keeps it only if all three pass. Rules are planned in the
order of their stages, because each one changes what the next one sees:

  1  i440FX -> Q35 (only when the conversion can be done and verified)
  2  functions of one card into one guest slot
  3  INTx devices off a pcie-expander-bus
  4  a guest line of its own for every assigned INTx device (joint)
  5  <ioapic driver='kvm'/>

A change that adds a finding of warning or worse is refused, except one
whose rule has a change of its own in a later stage: that one is kept
provisionally, and the plan stands only if the finding is gone from its
final XML (Change.introduces says which later change removed it);
otherwise the stage is planned strictly and the plan made again
(plan_domain says why).

Guest lines come from the routing model (facts/guest_intx.py; QEMU
hw/pci/pci.c swizzle, hw/isa/lpc_ich9.c ich9_lpc_map_irq, hw/i386/pc_piix.c
pc_pci_slot_get_pirq, SeaBIOS src/fw/pciinit.c), never from a fixed table here.
"""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

from lxml import etree

from vfio_advisor.config import DEFAULTS, Config
from vfio_advisor.engine import Engine
from vfio_advisor.errors import DomainXMLError
from vfio_advisor.facts.domain import (
    XPATH, Domain, PciAddress, address_of, domain_from_element, int_or_none, parse_tree,
    serialize, source_address_of,
)
from vfio_advisor.facts.guest_intx import (
    QEMU_MODEL_MSI, GuestFunction, GuestIntxMap, build_guest_intx_map,
)
from vfio_advisor.facts.model import DomainFacts, host_pins
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.fix import textedit
from vfio_advisor.fix import verify as verify_module
from vfio_advisor.fix.layout import empty_controllers, emptied_controllers
from vfio_advisor.fix.verify import Check, QemuCheck, Verifier, describe_finding
from vfio_advisor.fix.xmledit import (
    Occupancy, Op, apply_ops, describe_key, device_key, next_controller_index,
)
from vfio_advisor.rules import RULES, Rule, lookup
from vfio_advisor.rules.remedies import DOMAIN_XML


class Analysis(NamedTuple):
    domain: Domain
    facts: DomainFacts
    findings: tuple[Finding, ...]

    def host_pins(self) -> dict[str, int | None]:
        """Host BDF -> the INTx pin vfio-pci gives the guest (None: unknown)."""
        return host_pins(self.facts.devices, self.facts.host.kernel.nointxmask)


class Analyzer:
    """Host facts gathered once (one engine session); any number of domain
    XMLs analysed against them under the config's ignore policy, as advise
    and the hook do. `fix` re-analyses every candidate XML with the very same
    facts, so a change is judged on the host it was planned for."""

    def __init__(self, host_root_dir: str, config: Config = DEFAULTS):
        self.engine = Engine(host_root_dir, config)
        self.engine.host()

    @classmethod
    def from_engine(cls, engine: Engine) -> "Analyzer":
        """Reuse a session (advise's) so its host facts are read once."""
        self = cls.__new__(cls)
        self.engine = engine
        return self

    def analyse(self, xml: str | bytes | etree._Element) -> Analysis:
        """`xml`: text, or a parsed (possibly edited) <domain> tree, read as it is."""
        domain = domain_from_element(xml if isinstance(xml, etree._Element) else parse_tree(xml))
        facts, findings = self.engine.analyse(domain)
        return Analysis(domain, facts, tuple(findings))


def _rule_id(slug: str) -> str:
    """A rule's ID, for the prose that names it (IDs are spelt in rules/ only)."""
    return lookup(slug).id


def _domain_xml_rules() -> tuple[Rule, ...]:
    """The rules whose `fix` is a domain XML change, in planning order: a
    rule is fixable here because it names one of the planners below."""
    return tuple(sorted((r for r in RULES if r.fix is not None and r.fix.kind == DOMAIN_XML),
                        key=lambda r: r.fix.stage))


FIX_RULES = _domain_xml_rules()
RULE_ORDER = tuple(r.id for r in FIX_RULES)
FIXABLE_RULES = frozenset(RULE_ORDER)


class Manual(Exception):
    """No XML change can be planned; str() says why, in one sentence.
    `unfixed`: a reason per finding, where they differ."""

    def __init__(self, reason: str, unfixed: list | None = None):
        super().__init__(reason)
        self.unfixed = unfixed or []


class Stuck(Exception):
    """A unit of functions cannot be moved at all; str() says why."""


@dataclass
class Change:
    rule: str
    summary: str
    details: list[str]
    devices: list[str]  # host BDFs, or guest addresses of emulated devices
    ops: list[Op]
    targeted: list[Finding]
    checks: list[Check] = field(default_factory=list)
    resolves: list[Finding] = field(default_factory=list)  # every original finding it removes
    # findings of warning or worse it brought in, each resolved by a later change of the plan
    introduces: list["Introduced"] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_json(self) -> dict:
        out = {
            "rule": self.rule,
            "summary": self.summary,
            "details": self.details,
            "devices": self.devices,
            "operations": [op.to_json() for op in self.ops],
            "targets": [_finding_ref(f) for f in self.targeted],
            "resolves": [_finding_ref(f) for f in self.resolves],
            "verification": {c.name: c.to_json() for c in self.checks},
            "verified": self.verified,
        }
        if self.introduces:  # present only when there is something to say, as "claims"
            out["introduces"] = [{**_finding_ref(i.finding), "severity": str(i.finding.severity),
                                  "resolved_by": i.resolved_by} for i in self.introduces]
        return out


class Introduced(NamedTuple):
    """A finding of warning or worse that a change brought in, and the rule
    of the later change in the same plan that resolved it."""
    finding: Finding
    resolved_by: str


@dataclass
class Unfixed:
    finding: Finding
    reason: str
    # "manual": no XML change could be planned; "unverified": planned, failed a
    # check; "unverifiable": the current XML already fails libvirt's checks,
    # or they cannot run here (missing_verifiers names what is missing)
    kind: str

    def to_json(self) -> dict:
        return {**_finding_ref(self.finding), "severity": str(self.finding.severity),
                "kind": self.kind, "reason": self.reason}


def _finding_ref(f: Finding) -> dict:
    return {"rule": f.rule_id, "subject": f.subject, "guest_address": f.guest_address}


@dataclass
class DomainPlan:
    name: str
    base_xml: str  # the domain XML as analysed (lxml-serialised, comments kept)
    fixed_xml: str
    before: Analysis
    after: Analysis
    changes: list[Change]  # verified, applied in order
    rejected: list[Change]  # planned, failed verification, not offered
    unfixed: list[Unfixed]
    other: list[Finding]  # warning or worse, of rules no domain XML change fixes
    source_text: str | None = None  # the user's text, as given
    base_root: etree._Element | None = None
    fixed_root: etree._Element | None = None

    @property
    def minimal(self) -> bool:
        """Is `fixed_text` the user's text with only the changed elements
        rewritten (not the re-serialised fallback)?"""
        if not self.changed:
            return True
        self.fixed_text  # noqa: B018 - computes the flag
        return self.__dict__["_minimal"]

    @property
    def fixed_text(self) -> str:
        """The user's text with only the changed elements rewritten
        (fix/textedit.py); the re-serialised XML where that cannot be done."""
        if not self.changed:
            return self.source_text if self.source_text is not None else self.base_xml
        cached = self.__dict__.get("_fixed_text")
        if cached is None:
            cached = self.fixed_xml
            if self.source_text is not None and self.base_root is not None:
                text = textedit.render(self.source_text, self.base_root, self.ops)
                if text is not None and self.fixed_root is not None:
                    try:
                        same = textedit.same_tree(parse_tree(text), self.fixed_root)
                    except DomainXMLError:
                        same = False
                    if same:
                        cached = text
            self.__dict__["_minimal"] = cached is not self.fixed_xml
            self.__dict__["_fixed_text"] = cached
        return cached

    @property
    def ops(self) -> list[Op]:
        return [op for c in self.changes for op in c.ops]

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    @property
    def complete(self) -> bool:
        """Every fixable finding of warning or worse got a verified fix."""
        return not any(u.finding.severity >= Severity.WARNING for u in self.unfixed)

    def fix_for_finding(self, finding: Finding) -> Change | None:
        """The verified change that removes `finding` (matched by rule and
        subject), or None."""
        key = finding.key
        for change in self.changes:
            if any(f.key == key for f in change.resolves):
                return change
        return None

    def unfixed_for_finding(self, finding: Finding) -> Unfixed | None:
        key = finding.key
        return next((u for u in self.unfixed if u.finding.key == key), None)

    def diff(self) -> str:
        """A unified diff that `patch` applies to the user's own file."""
        old = self.source_text if self.source_text is not None else self.base_xml
        return unified_diff(old, self.fixed_text, f"{self.name} (current)", f"{self.name} (fixed)")


def unified_diff(old: str, new: str, fromfile: str, tofile: str) -> str:
    """difflib's unified diff, with GNU diff's marker for a last line
    without a newline (else `patch` rejects the hunk that touches it)."""
    out = []
    for line in difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                     fromfile=fromfile, tofile=tofile):
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    return "".join(out)


# --- routing helpers ----------------------------------------------------------

class Router:
    """The routing model over a working XML tree, with the host facts fixed:
    the pins vfio-pci gives each assigned device, and which of them are on
    MSI now and can use it (as the guest-line-shared rule judges its sharers)."""

    def __init__(self, analysis: Analysis):
        self.pins = analysis.host_pins()
        self.msi_now = {d.address for d in analysis.facts.devices
                        if d.device is not None and d.device.supports_msi is True
                        and not d.interrupts.on_intx}

    def domain(self, root: etree._Element) -> Domain:
        return domain_from_element(root)

    def gmap(self, root: etree._Element) -> GuestIntxMap:
        return build_guest_intx_map(self.domain(root), self.pins)

    def costly(self, fn: GuestFunction) -> bool:
        """Does this function's INTx cost a sharer? Routed, with a pin, and
        not a device whose guest driver leaves INTx for MSI (emulated models
        in QEMU_MODEL_MSI; assigned devices on MSI now)."""
        if not fn.routed or not fn.pin:
            return False
        if fn.kind == "hostdev":
            return fn.host_address not in self.msi_now
        return fn.model not in QEMU_MODEL_MSI

    def costly_sharers(self, gmap: GuestIntxMap, fn: GuestFunction) -> list[GuestFunction]:
        return [s for s in gmap.sharers(fn) if self.costly(s)]

    def conflicted(self, gmap: GuestIntxMap) -> set[str]:
        """Host BDFs of assigned INTx functions (not on MSI) that share their
        guest line with a costly function."""
        return {fn.host_address for fn in gmap.functions
                if fn.kind == "hostdev" and self.costly(fn) and self.costly_sharers(gmap, fn)}


def _line(gmap: GuestIntxMap, fn: GuestFunction) -> str:
    if fn.irq is None:
        return "no line"
    return f"{'GSI' if gmap.chipset == 'q35' else 'IRQ'} {fn.irq}"


def free_root_slots(root: etree._Element, gmap: GuestIntxMap) -> list[int]:
    """Root-bus slots nothing uses. Q35: not 0 (host bridge) or 0x1f (LPC,
    SMBus, SATA: libvirt qemuDomainValidateDevicePCISlotsQ35); i440FX: not 0
    or 1 (PIIX3 functions, qemuDomainValidateDevicePCISlotsPIIX3)."""
    occ = Occupancy.of(root)
    used = {f.guest_address.slot for f in gmap.functions if f.guest_address.bus == 0}
    reserved = {0, 0x1F} if gmap.chipset == "q35" else {0, 1}
    return [s for s in range(32) if s not in reserved and s not in used and not occ.used(0, s)]


def _unit_of(gmap: GuestIntxMap, bdf: str) -> list[GuestFunction]:
    """The assigned functions in the guest slot of `bdf` (a card moves whole)."""
    fn = next(f for f in gmap.functions if f.host_address == bdf)
    a = fn.guest_address
    return [f for f in gmap.functions if f.kind == "hostdev"
            and (f.guest_address.bus, f.guest_address.slot) == (a.bus, a.slot)]


def slot_companions(root: etree._Element, unit: list[GuestFunction]) -> list[tuple[tuple, PciAddress]]:
    """(key, address) of every other device in the guest slot of `unit`:
    controllers and emulated functions that share the slot with assigned
    functions. They move with it, or function 0 would leave them in a slot
    the guest never scans (Linux drivers/pci/probe.c pci_scan_slot reads
    function 0 first)."""
    a = unit[0].guest_address
    own = {("hostdev", f.host_address) for f in unit}
    out = []
    for el in root.xpath(XPATH["device_elements"]):
        b = address_of(el)
        if b is None or (b.domain, b.bus, b.slot) != (a.domain, a.bus, a.slot):
            continue
        if el.tag == "hostdev" or (el.tag == "interface" and el.get("type") == "hostdev"):
            src = source_address_of(el)
            if ("hostdev", str(src)) in own:
                continue
            out.append((("hostdev", str(src)), b))
        elif el.tag == "controller" and el.get("type") == "pci":
            out.append((("controller", int_or_none(el.get("index"))), b))
        else:
            out.append((device_key(el, b), b))
    return out


def _unit_ops(root: etree._Element, unit: list[GuestFunction], slot: int,
              via_root_port: bool, with_companions: bool = True) -> tuple[list[Op], str]:
    """The moves that put `unit` (and everything else in its guest slot) at
    `slot`; ([], why) when that cannot be done. `with_companions` False: the
    unit's functions come from several slots (a split card), none is left."""
    companions = slot_companions(root, unit) if with_companions else []
    several = len(unit) + len(companions) > 1
    ops: list[Op] = []
    if via_root_port:
        if companions:
            # A pcie-root-port holds one device (slot 0); controllers and
            # other functions cannot follow the card behind it.
            return [], ("its guest slot also holds " + ", ".join(describe_key(k) for k, _ in companions)
                        + ", which cannot follow it behind a pcie-root-port")
        index = next_controller_index(root)
        if index > 255:
            return [], "no pci controller index is free"
        ops.append(Op("add-pci-controller", index=index, model="pcie-root-port",
                      address=PciAddress(0, 0, slot, 0)))
        bus, dslot = index, 0
        where = f"behind a new pcie-root-port (index {index}) at 0000:00:{slot:02x}.0"
    else:
        bus, dslot = 0, slot
        where = f"at root-bus slot 0x{slot:02x}"
        if companions:
            where += " with the rest of its slot (" + ", ".join(
                f"{describe_key(k)} -> .{a.function}" for k, a in companions) + ")"
    for fn in unit:
        f = fn.guest_address.function
        ops.append(Op("set-address", key=("hostdev", fn.host_address),
                      address=PciAddress(0, bus, dslot, f),
                      multifunction=True if (several and f == 0) else None))
    for key, a in companions:
        ops.append(Op("set-address", key=key, address=PciAddress(0, bus, dslot, a.function),
                      multifunction=True if (several and a.function == 0) else None))
    return ops, where


def place_unit(router: Router, root: etree._Element, unit: list[GuestFunction],
               via_root_port: bool, before: set[str],
               with_companions: bool = True) -> tuple[list[Op], str, GuestIntxMap] | None:
    """The first free root-bus slot where every INTx function of `unit` has
    a line no costly function uses, and no other assigned device starts to
    share. None when there is no such slot."""
    gmap = router.gmap(root)
    bdfs = {f.host_address for f in unit}
    for slot in free_root_slots(root, gmap):
        ops, where = _unit_ops(root, unit, slot, via_root_port, with_companions)
        if not ops:
            raise Stuck(where)
        trial = apply_ops(root, ops)
        tmap = router.gmap(trial)
        moved = [f for f in tmap.functions if f.host_address in bdfs and router.costly(f)]
        if any(not f.routed or router.costly_sharers(tmap, f) for f in moved):
            continue
        if router.conflicted(tmap) - before:
            continue  # would make another assigned device share
        return ops, where, tmap
    return None


# --- the planners ---------------------------------------------------------------

@dataclass
class Proposal:
    ops: list[Op]
    summary: str
    details: list[str]
    devices: list[str]
    targeted: list[Finding]
    unfixed: list[Unfixed] = field(default_factory=list)


def plan_va5001(root, analysis: Analysis, targets: list[Finding], router: Router) -> Proposal:
    """Joint: move cards (whole guest slots) one at a time, each to a slot
    whose lines are free in the layout that includes every earlier move, so
    no two devices are ever sent to the same line."""
    gmap = router.gmap(root)
    if gmap.chipset not in ("q35", "i440fx"):
        raise Manual("the machine type is neither Q35 nor i440FX: guest routing is not modelled")
    flagged = {f.subject for f in targets}
    start = router.conflicted(gmap)
    ops: list[Op] = []
    details: list[str] = []
    devices: list[str] = []
    stuck: set[str] = set()
    reasons: dict[str, str] = {}  # host BDF -> why its unit cannot move
    work = root
    for _ in range(64):
        gmap = router.gmap(work)
        todo = sorted((router.conflicted(gmap) & flagged) - stuck)
        if not todo:
            break
        unit = _unit_of(gmap, todo[0])
        via_root_port = gmap.chipset == "q35" and unit[0].guest_address.bus != 0
        shared = _same_pin_in_unit(router, unit)
        try:
            placed = None if shared else place_unit(router, work, unit, via_root_port,
                                                    router.conflicted(gmap) | start)
        except Stuck as exc:
            placed = None
            for f in unit:
                reasons[f.host_address] = (f"it cannot move without the rest of its guest slot: "
                                           f"{exc}; move them by hand, or use MSI in the guest "
                                           "where the device and the host allow it")
        if shared:
            for f in unit:
                reasons[f.host_address] = shared
        if placed is None:
            stuck |= {f.host_address for f in unit}
            continue
        unit_ops, where, tmap = placed
        ops += unit_ops
        work = apply_ops(work, unit_ops)
        for fn in unit:
            new = next(f for f in tmap.functions if f.host_address == fn.host_address)
            devices.append(fn.host_address)
            details.append(f"{fn.host_address}: guest {fn.guest_address} -> {new.guest_address} "
                           f"{where}; pin {new.pin_letter or '-'} -> {_line(tmap, new)}"
                           + (", a line no other INTx user shares" if new.pin else " (no INTx)"))
    final = router.conflicted(router.gmap(work))
    fixed = [f for f in targets if f.subject not in final]
    left = [f for f in targets if f.subject in final]
    if gmap.chipset == "i440fx":
        why = ("on i440FX every PCI INTx goes to IRQ 10 or 11 (SeaBIOS wires PIRQ A,B to 10 and "
               "C,D to 11) and other INTx functions hold both: no guest address gives it a line "
               f"of its own; convert the domain to Q35 ({_rule_id('i440fx-with-pcie-or-intx-devices')}), or use MSI in the guest where the device and the host allow it")
    else:
        why = ("no free slot on pcie.0 gives it a line (GSI 16-23) that no other INTx "
               "function uses; free a slot, or use MSI in the guest where the device and the host allow it")
    unfixed = [Unfixed(f, reasons.get(f.subject, why), "manual") for f in left]
    if not ops:
        raise Manual(why, unfixed)
    return Proposal(ops, "give every assigned INTx device a guest line of its own", details,
                    devices, fixed, unfixed)


def _same_pin_in_unit(router: Router, unit: list[GuestFunction]) -> str | None:
    """Why no slot helps when two INTx functions of one guest slot use the
    same pin: one slot and one pin are one guest line wherever the slot goes
    (QEMU hw/pci/pci.c pci_swizzle_map_irq_fn maps slot and pin; the pin is
    the host's, which vfio-pci passes on)."""
    costly = [f for f in unit if router.costly(f)]
    for i, a in enumerate(costly):
        for b in costly[i + 1:]:
            if a.pin and a.pin == b.pin:
                return (f"{a.host_address} and {b.host_address} are functions of one guest slot and "
                        f"both use INTx pin {a.pin_letter}, so they share one guest line wherever "
                        "that slot is; give them separate guest slots (each function of the "
                        "card at function 0 of its own slot), or use MSI in the guest for one of them")
    return None


def plan_va4002(root, analysis: Analysis, targets: list[Finding], router: Router) -> Proposal:
    facts = analysis.facts
    ops: list[Op] = []
    details, devices, fixed, unfixed = [], [], [], []
    work = root
    for finding in targets:
        dev = next((d for d in facts.devices if d.address == finding.subject), None)
        if dev is None:
            unfixed.append(Unfixed(finding, "the finding names no assigned device", "manual"))
            continue
        group = [dev, *facts.siblings(dev)]
        by_fn = {int(d.address.rsplit(".", 1)[1], 16): d for d in group}
        if 0 not in by_fn:
            unfixed.append(Unfixed(finding, f"function 0 of {dev.address.rsplit('.', 1)[0]} is not "
                                   "assigned, and a guest slot is enumerated from function 0",
                                   "manual"))
            continue
        if any(d.hostdev.guest is None for d in group):
            unfixed.append(Unfixed(finding, "some functions have no guest address yet", "manual"))
            continue
        head = by_fn[0].hostdev.guest.address
        occ = Occupancy.of(work)
        own = {d.hostdev.guest.address for d in group}
        clash = [f for f in by_fn if occ.used(head.bus, head.slot, f)
                 and PciAddress(head.domain, head.bus, head.slot, f) not in own]
        step: list[Op] = []
        if not clash:
            for f, d in sorted(by_fn.items()):
                step.append(Op("set-address", key=("hostdev", d.address),
                               address=PciAddress(head.domain, head.bus, head.slot, f),
                               multifunction=True if f == 0 else None))
            where = f"guest slot {head.domain:04x}:{head.bus:02x}:{head.slot:02x}"
        else:
            # The slot of function 0 has other devices at the functions we need:
            # a slot of their own (behind a new root port on Q35).
            gmap = router.gmap(work)
            slots = free_root_slots(work, gmap)
            if not slots:
                unfixed.append(Unfixed(finding, "no free root-bus slot for the card", "manual"))
                continue
            unit = [GuestFunction(PciAddress(0, 0, 0, f), "hostdev", None, d.address, None)
                    for f, d in sorted(by_fn.items())]
            step, where = _unit_ops(work, unit, slots[0], gmap.chipset == "q35")
        trial = apply_ops(work, step)
        # Functions with one pin in one slot share one guest line (QEMU
        # hw/pci/pci.c pci_swizzle_map_irq_fn): joining them must not make
        # an assigned device share a line it had to itself.
        now_shared = router.conflicted(router.gmap(work))
        joined = {d.address for d in group}
        newly = (router.conflicted(router.gmap(trial)) - now_shared) & joined
        if newly:
            pins = [router.pins.get(d.address) for d in group]
            same = [p for p in set(pins) if p and pins.count(p) > 1]
            if same:
                letter = "ABCD"[same[0] - 1]
                unfixed.append(Unfixed(finding, (
                    f"joined in one guest slot, {', '.join(sorted(newly))} would share one guest "
                    f"line: functions of the card use the same INTx pin {letter} (vfio-pci passes the "
                    "host's pin), and one slot with one pin is one line (QEMU hw/pci/pci.c "
                    "pci_swizzle_map_irq_fn); the card works as it is, each function at function 0 "
                    "of its own slot; to have it in one slot, use MSI in the guest for all but one "
                    "of them"), "manual"))
                continue
            # Different pins, but the head slot's lines are taken: a slot of
            # its own where every function gets a line nobody else uses.
            gmap = router.gmap(work)
            unit = [GuestFunction(PciAddress(0, 0, 0, f), "hostdev", None, d.address,
                                  router.pins.get(d.address))
                    for f, d in sorted(by_fn.items())]
            try:
                placed = place_unit(router, work, unit, gmap.chipset == "q35",
                                    router.conflicted(gmap), with_companions=False)
            except Stuck:
                placed = None
            if placed is None:
                unfixed.append(Unfixed(finding, (
                    f"joined in one guest slot, {', '.join(sorted(newly))} would share a guest line "
                    "with another INTx function, and no free slot gives every function a line of "
                    "its own; the card works as it is, each function in its own slot"), "manual"))
                continue
            step, where, _ = placed
        ops += step
        work = apply_ops(work, step)
        devices += [d.address for _, d in sorted(by_fn.items())]
        fixed.append(finding)
        details.append(f"{dev.address.rsplit('.', 1)[0]}: functions "
                       + ", ".join(f"{d.address} -> .{f}" for f, d in sorted(by_fn.items()))
                       + f" {where if where.startswith('behind') else 'in ' + where}, "
                       "multifunction='on' on function 0")
    if not ops:
        raise Manual(unfixed[0].reason if unfixed else "nothing to change")
    return Proposal(ops, "put every function of a card in one guest slot", details, devices,
                    fixed, unfixed)


def plan_va5003(root, analysis: Analysis, targets: list[Finding], router: Router) -> Proposal:
    domain = analysis.domain
    gmap = analysis.facts.guest_intx
    controllers = {c.index: c for c in domain.controllers}
    pxb = {c.index for c in domain.controllers if c.model == "pcie-expander-bus"}
    # Only the functions the pxb rule flagged (by guest address): MSI users behind
    # the same expander bus (e1000e, virtio, root ports) are fine there and stay.
    flagged = {dict(f.evidence).get("guest address") for f in targets}
    children: dict[tuple, GuestFunction] = {}  # direct child of a pxb-pcie -> a function behind it
    for fn in gmap.functions:
        if not fn.pin or str(fn.guest_address) not in flagged:
            continue
        addr, bus = fn.guest_address, fn.guest_address.bus
        node: tuple | None = None
        seen = set()
        while bus != 0 and bus not in pxb and bus not in seen:
            seen.add(bus)
            ctrl = controllers.get(bus)
            if ctrl is None or ctrl.address is None:
                break
            node = ("controller", ctrl.index)
            addr, bus = ctrl.address.address, ctrl.address.address.bus
        if bus in pxb:
            if node is None:  # the function itself sits on the expander bus
                node = (("hostdev", fn.host_address) if fn.kind == "hostdev"
                        else ("controller", next(c.index for c in domain.controllers
                                                 if c.address and c.address.address == fn.guest_address))
                        if fn.kind == "controller" else ("device", _element_of(root, fn), str(fn.guest_address)))
            children.setdefault(node, fn)
    if not children:
        raise Manual("no INTx function found behind a pcie-expander-bus")
    ops: list[Op] = []
    details: list[str] = []
    work = root
    start = router.conflicted(router.gmap(work))
    for node, fn in sorted(children.items(), key=lambda kv: str(kv[0])):
        gmap = router.gmap(work)
        slots = free_root_slots(work, gmap)
        if not slots:
            raise Manual("no free slot on pcie.0 for the devices behind the pcie-expander-bus")
        chosen = None
        for slot in slots:
            step = _move_child(work, node, slot)
            trial = apply_ops(work, step)
            if not (router.conflicted(router.gmap(trial)) - start):
                chosen = (slot, step)
                break
        slot, step = chosen or (slots[0], _move_child(work, node, slots[0]))
        ops += step
        work = apply_ops(work, step)
        what = (f"pci controller index {node[1]}" if node[0] == "controller"
                else f"{node[0]} {node[-1]}")
        details.append(f"{what} (with everything behind it) -> 0000:00:{slot:02x}.0 on pcie.0"
                       + ("" if node[0] == "controller" else " behind a new pcie-root-port"))
    devices = sorted({f.subject or (dict(f.evidence).get("guest address") or "") for f in targets})
    return Proposal(ops, "move INTx devices off the pcie-expander-bus to pcie.0", details,
                    devices, list(targets))


def _element_of(root, fn: GuestFunction) -> str:
    for el in root.xpath(XPATH["device_elements"]):
        if address_of(el) == fn.guest_address:
            return el.tag
    return "*"


def _move_child(root, node: tuple, slot: int) -> list[Op]:
    if node[0] == "controller":
        return [Op("set-address", key=node, address=PciAddress(0, 0, slot, 0))]
    index = next_controller_index(root)
    return [Op("add-pci-controller", index=index, model="pcie-root-port",
               address=PciAddress(0, 0, slot, 0)),
            Op("set-address", key=node, address=PciAddress(0, index, 0, 0))]


# Beyond 255 vCPUs QEMU needs x2APIC with an emulated IOMMU's EIM, which
# needs the split irqchip (QEMU hw/i386/x86.c, x86_cpus_init / intel_iommu eim).
MAX_VCPUS_IN_KERNEL_IRQCHIP = 255


def plan_va4003(root, analysis: Analysis, targets: list[Finding], router: Router) -> Proposal:
    domain = analysis.domain
    intremap = root.xpath(XPATH["iommu_driver_intremap"])
    if intremap == "on":
        raise Manual("the domain's <iommu> has intremap='on', which libvirt accepts only with "
                     "<ioapic driver='qemu'/> (src/conf/domain_validate.c, "
                     "virDomainDefIOMMUValidate); use MSI in the guest instead where the device and the host allow it")
    if domain.vcpus is not None and domain.vcpus > MAX_VCPUS_IN_KERNEL_IRQCHIP:
        raise Manual(f"{domain.vcpus} vCPUs need the split irqchip (x2APIC beyond 255 "
                     "vCPUs); use MSI in the guest instead where the device and the host allow it")
    return Proposal([Op("ensure-ioapic", value="kvm")],
                    "use KVM's in-kernel IOAPIC (<ioapic driver='kvm'/>)",
                    ["<features><ioapic driver='qemu'/> -> <ioapic driver='kvm'/>: INTx of "
                     "assigned devices goes through KVM's irqfd resampler again"],
                    sorted({f.subject for f in targets if f.subject}), list(targets))


def _q35_machine(machine: str | None) -> str | None:
    """The Q35 machine of the same QEMU version: pc -> q35,
    pc-i440fx-X -> pc-q35-X (QEMU hw/i386/pc_q35.c registers pc-q35-2.4 and
    later with the same version numbers as pc_piix.c)."""
    if machine == "pc":
        return "q35"
    if machine and machine.startswith("pc-i440fx-"):
        version = machine[len("pc-i440fx-"):]
        major = version.split(".", 1)[0]
        if major.isdigit() and int(major) >= 3:
            return "pc-q35-" + version
    return None


def plan_va4001(root, analysis: Analysis, targets: list[Finding], router: Router) -> Proposal:
    domain = analysis.domain
    if (domain.arch or "x86_64") not in ("x86_64", "i686"):
        raise Manual(f"arch {domain.arch} has no Q35 machine")
    machine = _q35_machine(domain.machine)
    if machine is None:
        raise Manual(f"machine {domain.machine} has no Q35 counterpart of the same QEMU version "
                     "(pc-q35-X exists for the pc-i440fx-X versions QEMU still keeps); choose one by hand")
    blockers = []
    for disk in root.xpath(XPATH["disks"]):
        bus = disk.xpath(XPATH["disk_target_bus"])
        if bus in ("ide", "fdc"):
            blockers.append(f"disk {disk.xpath(XPATH['disk_target_dev'])} is on the {bus.upper()} bus, "
                            "which Q35 does not have; moving it to SATA needs the guest's AHCI "
                            "driver first (a Windows boot disk otherwise stops with "
                            "INACCESSIBLE_BOOT_DEVICE)")
    for ctrl in domain.controllers:
        if ctrl.model not in (None, "pci-root"):
            blockers.append(f"pci controller {ctrl.index} ({ctrl.model}) needs re-planning for PCIe "
                            "(behind a pcie-to-pci-bridge)")
    for el in root.xpath(XPATH["fdc_controllers"]):
        blockers.append("a floppy controller, which Q35 does not have")
    if blockers:
        raise Manual("Q35 conversion is manual here: " + "; ".join(blockers))
    ops: list[Op] = [Op("set-attr", xpath=XPATH["os_type"], name="machine", value=machine)]
    details = [f"machine {domain.machine} -> {machine}"]
    if root.xpath(XPATH["pci_root_controllers"]):
        index0 = next(c.index for c in domain.controllers if c.model == "pci-root")
        ops.append(Op("set-controller-model", key=("controller", index0), model="pcie-root"))
        details.append("pci-root -> pcie-root")
    for el in root.xpath(XPATH["ide_controllers"]):
        ops.append(Op("remove", key=device_key(el, address_of(el))))
        details.append("removed the PIIX3 IDE controller (no IDE disks)")
    work = apply_ops(root, ops)
    # Devices in slot 1 were functions of the PIIX3 (USB at 00:01.2); on Q35
    # slot 1 has no function 0, so the guest would never enumerate them.
    for el in work.xpath(XPATH["device_elements"]):
        a = address_of(el)
        if a is not None and a.bus == 0 and a.slot == 1:
            gmap = router.gmap(work)
            slots = free_root_slots(work, gmap)
            if not slots:
                raise Manual("no free pcie.0 slot for the devices of slot 1")
            step = [Op("set-address", key=device_key(el, a), address=PciAddress(0, 0, slots[0], 0))]
            ops += step
            work = apply_ops(work, step)
            details.append(f"<{el.tag}> {a} -> 0000:00:{slots[0]:02x}.0 (slot 1 was the PIIX3's)")
    # Slot 0x1f is the ICH9's own on Q35: the LPC/ISA bridge at 00:1f.0 and
    # SMBus at 00:1f.3 are always there, and the SATA controller of index 0
    # must sit at 00:1f.2 (libvirt 9.0 src/qemu/qemu_domain_address.c
    # qemuDomainValidateDevicePCISlotsQ35: "Primary SATA controller must have
    # PCI address 0:0:1f.2", and "Attempted double use of PCI Address
    # 0000:00:1f.0" for anything else there). What an i440FX domain had in
    # slot 0x1f moves, as one slot, to a free one.
    def is_sata0(el) -> bool:
        return el.tag == "controller" and el.get("type") == "sata" and int_or_none(el.get("index") or "0") == 0
    in_1f = [(el, a) for el in work.xpath(XPATH["device_elements"])
             if (a := address_of(el)) is not None and (a.domain, a.bus, a.slot) == (0, 0, 0x1F)
             and not is_sata0(el)]
    if in_1f:
        slots = free_root_slots(work, router.gmap(work))
        if not slots:
            raise Manual("Q35 conversion: no free pcie.0 slot for the devices of slot 0x1f, which "
                         "is the ICH9's own on Q35")
        several = len(in_1f) > 1
        step = []
        for el, a in in_1f:
            key = (("hostdev", str(source_address_of(el))) if el.tag == "hostdev" else
                   ("controller", int_or_none(el.get("index")))
                   if el.tag == "controller" and el.get("type") == "pci" else device_key(el, a))
            step.append(Op("set-address", key=key, address=PciAddress(0, 0, slots[0], a.function),
                           multifunction=True if several and a.function == 0 else None))
            details.append(f"<{el.tag}> {a} -> 0000:00:{slots[0]:02x}.{a.function:x} (slot 0x1f "
                           "is the ICH9's LPC, SATA and SMBus on Q35)")
        ops += step
        work = apply_ops(work, step)
    for el in work.xpath(XPATH["sata_controllers"]):
        a = address_of(el)
        if is_sata0(el) and a is not None and a != PciAddress(0, 0, 0x1F, 2):
            step = [Op("set-address", key=device_key(el, a), address=PciAddress(0, 0, 0x1F, 2),
                       multifunction=False)]
            ops += step
            work = apply_ops(work, step)
            details.append(f"SATA controller 0 {a} -> 0000:00:1f.2 (the ICH9 AHCI controller, "
                           "where libvirt requires it on Q35)")
    # The ICH9 USB set (EHCI1 and its UHCI companions) goes where libvirt puts
    # it on Q35, 00:1d.x (qemuDomainValidateDevicePCISlotsQ35): slots 25-29
    # route by pin to PIRQ A-D (ich9_lpc_map_irq), which leaves the E-H lines
    # of the ordinary slots to the assigned devices.
    usb_slots = sorted({a.slot for el in work.xpath(XPATH["usb_controllers"])
                        if (el.get("model") or "").startswith("ich9-")
                        and (a := address_of(el)) is not None and a.bus == 0 and a.slot != 0x1D})
    occ = Occupancy.of(work)
    if len(usb_slots) == 1 and not occ.used(0, 0x1D):
        for el in work.xpath(XPATH["usb_controllers"]):
            a = address_of(el)
            if a is not None and a.bus == 0 and a.slot == usb_slots[0]:
                step = [Op("set-address", key=device_key(el, a),
                           address=PciAddress(0, 0, 0x1D, a.function))]
                ops += step
                work = apply_ops(work, step)
        details.append(f"ICH9 USB controllers 0000:00:{usb_slots[0]:02x}.x -> 0000:00:1d.x "
                       "(their Q35 place)")
    # Assigned devices: each card behind a root port of its own, on lines
    # planned jointly as for the shared guest lines (plan_va5001).
    start: set[str] = set()
    done: set[str] = set()
    for hd in domain.hostdevs:
        if hd.guest is None or str(hd.source) in done:
            continue
        gmap = router.gmap(work)
        unit = _unit_of(gmap, str(hd.source))
        placed = place_unit(router, work, unit, True, router.conflicted(gmap) | start)
        if placed is None:
            slots = free_root_slots(work, gmap)
            if not slots:
                raise Manual("Q35 conversion: no free pcie.0 slot for a root port")
            step, where = _unit_ops(work, unit, slots[0], True)
            tmap = router.gmap(apply_ops(work, step))
        else:
            step, where, tmap = placed
        ops += step
        work = apply_ops(work, step)
        for fn in unit:
            done.add(fn.host_address)
            new = next(f for f in tmap.functions if f.host_address == fn.host_address)
            details.append(f"{fn.host_address}: guest {fn.guest_address} -> {new.guest_address} "
                           f"{where}; {_line(tmap, new)}")
    if domain.guest_os == "windows":
        details.append("Windows re-detects the chipset's devices on its first boot on Q35")
    return Proposal(ops, "convert the machine to Q35 with PCIe root ports for assigned devices",
                    details, sorted(done), list(targets))


def tidy_ops(before: etree._Element, after: etree._Element) -> list[Op]:
    """Removals of the PCI controllers a change left without a device (an
    empty pcie-root-port is a hotplug slot nobody asked for), except one
    that is function 0 of a slot with other functions: it keeps them
    visible to the guest. The highest index takes the place of a removed
    one, with the devices on its bus, because libvirt refills a gap in the
    controller indexes with a controller of the default model
    (src/qemu/qemu_domain_address.c qemuDomainPCIAddressSetCreate,
    "Auto-adding"); when the highest is itself an empty spare, the gap
    stays and libvirt fills it with a spare of its own."""
    ops: list[Op] = []
    work = after
    for index in sorted(emptied_controllers(before, after), reverse=True):
        el = next(e for e in work.xpath(XPATH["pci_controllers"]) if int_or_none(e.get("index")) == index)
        a = address_of(el)
        if a is not None and a.function == 0 and any(
                (b := address_of(o)) is not None and (b.domain, b.bus, b.slot) == (a.domain, a.bus, a.slot)
                and o is not el for o in work.xpath(XPATH["device_elements"])):
            continue
        top = max(i for e in work.xpath(XPATH["pci_controllers"])
                  if (i := int_or_none(e.get("index"))) is not None)
        more = [Op("remove", key=("controller", index))]
        if index != top and top not in empty_controllers(work):
            more.append(Op("set-controller-index", key=("controller", top), index=index))
        ops += more
        work = apply_ops(work, more)
    return ops


def planner_of(rule: Rule) -> Callable[..., Proposal]:
    """The planner a rule names (Rule.fix.planner), looked up when it runs."""
    module, _, name = rule.fix.planner.rpartition(":")
    if module:  # "package.module:function": a planner kept with its feature (guest/channel.py)
        import importlib  # noqa: PLC0415

        planner = getattr(importlib.import_module(module), name, None)
    else:
        planner = globals().get(name)
    if not callable(planner):
        raise ValueError(f"programming error: {rule.id} names planner {rule.fix.planner!r}, "
                         "which vfio_advisor/fix/planner.py does not define")
    return planner


# --- the whole domain -----------------------------------------------------------

def missing_verifiers() -> dict[str, list[str]]:
    """What verify.py's checks need and this machine lacks, per check
    ("schema", "testdriver"), one phrase each; a check with nothing missing
    is absent. Asked only after a check of the current XML failed, to tell
    "cannot check" from "libvirt refuses". virt-xml-validate is a shell
    script that runs xmllint (libvirt 9.0 tools/virt-xml-validate.in); the
    test driver is libvirt-python plus the driver built into libvirt, opened
    on test:///default as verify does."""
    missing: dict[str, list[str]] = {}
    if shutil.which(verify_module.SCHEMA_TOOL) is None:
        missing.setdefault("schema", []).append(
            f"{verify_module.SCHEMA_TOOL} is not installed (Debian package libvirt-clients)")
    if shutil.which("xmllint") is None:
        missing.setdefault("schema", []).append(
            "xmllint, which virt-xml-validate runs, is not installed (Debian package libxml2-utils)")
    try:
        import libvirt  # noqa: PLC0415 - lazy, as in verify.testdriver: the hook must never load it
    except ImportError:
        missing.setdefault("testdriver", []).append(
            "libvirt-python is not installed (Debian package python3-libvirt)")
    else:
        libvirt.registerErrorHandler(lambda *_: None, None)
        try:
            libvirt.open(verify_module.TESTDRIVER_URI).close()
        except libvirt.libvirtError as exc:
            missing.setdefault("testdriver", []).append(
                f"libvirt's test driver cannot be opened ({verify_module.TESTDRIVER_URI}: "
                + " ".join(str(exc.get_error_message()).split())[:200] + ")")
    return missing



def plan_domain(analyzer: Analyzer, xml: str | bytes, rules: Iterable[str] | None = None,
                verifier: Callable[..., list[Check]] | None = None,
                qemu: QemuCheck | None = None) -> DomainPlan:
    """Plan and verify. Raises DomainXMLError (one line) for XML that is not
    a domain. `rules`: the rule IDs to fix (default: every fixable one).
    `qemu`: where libvirt's qemu driver can check the XML (verify.QemuCheck).
    `verifier`: the checks instead of verify.Verifier's, called as it is
    (before, after, xml, targeted, pending, later).

    Claims come from the final XML only: a change is kept only if every
    finding of the original that the XML before it no longer had stays
    gone (a change that brings one back is not offered), so "resolves" of
    each change is what the final XML no longer has. A change that adds a
    finding of warning or worse is offered only when a later change of the
    plan resolves it (the change's `introduces` names both)."""
    text = xml.decode("utf-8", "replace") if isinstance(xml, bytes) else xml
    root = parse_tree(xml)
    base = serialize(root)
    before = analyzer.analyse(root)
    wanted_rules = FIXABLE_RULES if rules is None else FIXABLE_RULES & set(rules)
    router = Router(before)
    fixable = [f for f in before.findings if f.rule_id in wanted_rules]
    check = verifier
    if fixable and check is None:
        check = Verifier(base, qemu)
        # A check that cannot run here makes every change unverifiable: say
        # so once, rather than blame each planned change. What the original
        # itself fails does not count: each check fails a change only for
        # what the change adds (libvirt defines domains this host's
        # domain.rng refuses; its test driver refuses some the qemu driver
        # takes).
        missing = missing_verifiers()
        base_checks = [c for c in check.base_checks(before) if not c.ok and c.name in missing]
        if base_checks:
            # A check that could not run says nothing about the XML; one that
            # ran and failed does. Both are said when both happened.
            cannot = [p for c in base_checks for p in missing.get(c.name, ())]
            refused = [c for c in base_checks if c.name not in missing]
            parts = []
            if cannot:
                parts.append(f"no change can be verified: {'; '.join(cannot)}")
            if refused:
                parts.append("the current domain XML already fails " + "; ".join(
                    f"{'libvirt schema' if c.name == 'schema' else 'the libvirt test driver'} "
                    f"({c.detail})" for c in refused) + ", so no change to it can be verified")
            reason = "; and ".join(parts)
            other = [f for f in before.findings
                     if f.rule_id not in FIXABLE_RULES and f.severity >= Severity.WARNING]
            return DomainPlan(before.domain.name, base, base, before, before, [], [],
                              [Unfixed(f, reason, "unverifiable") for f in fixable], other,
                              source_text=text)
    # A change may bring in a finding that a later stage fixes (joining a
    # card's functions in one slot can put one of them on the guest line of
    # an assigned INTx-only device, which the guest-line stage then moves):
    # judged alone, the earlier change would be refused although the plan as
    # a whole ends without the finding. So such a change is accepted
    # provisionally, and the plan is judged on its final XML: a finding one
    # change introduced must be gone there. If one is left, the stage that
    # introduced it is planned strictly (its new findings refuse it, as for
    # any other change) and every stage is planned again from the original.
    # Dropping that change alone and keeping the later ones would not do:
    # their operations (addresses, new controller indexes) and their checks
    # were made on the XML it had changed. A fresh pass is the simplest
    # plan whose every change is judged on the XML it is applied to; it
    # costs one more round of checks, only where a later stage failed to
    # resolve what an earlier one introduced. Each retry makes one more
    # stage strict, so there is at most one more pass per stage.
    strict: dict[str, dict[tuple, str]] = {}  # stage rule -> why a finding it introduced is not left to later ones
    while True:
        run = _run_stages(analyzer, root, before, wanted_rules, router, check, strict)
        if not run.pending:
            break
        for key, (finding, by) in run.pending.items():
            strict.setdefault(by.rule, {})[key] = f"not left to a later change: {_why_left(run, finding)}"
    current_root, current, changes, unfixed = run.root, run.current, run.changes, run.unfixed
    # Findings an accepted change removed are not unfixed, whatever the
    # planner of their own rule said before (e.g. a shared guest line on i440FX after Q35).
    final = {f.key for f in current.findings}
    unfixed = [u for u in unfixed if u.finding.key in final]
    for change in changes:  # what each change resolved is gone from the final XML
        change.resolves = [f for f in change.resolves if f.key not in final]
        if change.introduces:
            # Its re-analysis said "left to the later change"; on the final
            # XML it is known which one resolved it.
            by = {i.finding.key: i.resolved_by for i in change.introduces}
            after, targeted, owed = run.judged[id(change)]
            recheck = verify_module.reanalysis(
                before, after, targeted, owed,
                lambda f, by=by: (True, f"resolved by the later {by[f.key]} change") if f.key in by else None)
            change.checks = [recheck if c.name == recheck.name else c for c in change.checks]
    other = [f for f in before.findings
             if f.rule_id not in FIXABLE_RULES and f.severity >= Severity.WARNING]
    return DomainPlan(name=before.domain.name, base_xml=base, fixed_xml=serialize(current_root),
                      before=before, after=current, changes=changes, rejected=run.rejected,
                      unfixed=unfixed, other=other, source_text=text, base_root=root,
                      fixed_root=current_root)


@dataclass
class _Pass:
    """One pass of the stages over the original XML (plan_domain)."""
    root: etree._Element
    current: Analysis
    changes: list[Change]
    rejected: list[Change]
    unfixed: list[Unfixed]
    # introduced by an accepted change and not resolved since: key -> (finding, that change)
    pending: dict[tuple, tuple[Finding, Change]]
    # id(change) -> (its re-analysis, the findings it had to remove, the
    # introduced ones it was not charged with): its reanalysis check again
    judged: dict[int, tuple[Analysis, list[Finding], list[Finding]]]


_FIX_RULE_OF = {r.id: r for r in FIX_RULES}


def _later(stage: Rule, wanted_rules: frozenset[str], strict: dict[tuple, str] | None):
    """verify.reanalysis's `later` for a change of `stage`'s rule: a new
    finding is left to a later stage when its rule's own change comes later
    in this plan, unless the stage is planned strictly."""
    def later(f: Finding) -> tuple[bool, str | None] | None:
        if strict is not None:
            return False, strict.get(f.key)
        fixer = _FIX_RULE_OF.get(f.rule_id)
        if fixer is None or fixer.fix.stage <= stage.fix.stage:
            return None
        if fixer.id not in wanted_rules:
            return False, (f"not left to the later {fixer.id} change: {fixer.id} is not among "
                           "the rules asked for")
        return True, f"left to the later {fixer.id} change"
    return later


def _why_left(run: _Pass, finding: Finding) -> str:
    """Why a finding an earlier change introduced is still in a pass's final XML."""
    key = finding.key
    left = next((u for u in run.unfixed if u.finding.key == key), None)
    if left is not None:
        return f"the {finding.rule_id} change leaves it: {left.reason}"
    failed = next((c for c in run.rejected if c.rule == finding.rule_id), None)
    if failed is not None:
        return f"the {finding.rule_id} change failed verification: " + "; ".join(
            f"{c.name}: {c.detail}" for c in failed.checks if not c.ok)
    return "the later changes leave it"


def _run_stages(analyzer: Analyzer, root: etree._Element, before: Analysis,
                wanted_rules: frozenset[str], router: Router, check: Callable[..., list[Check]],
                strict: dict[str, dict[tuple, str]]) -> _Pass:
    """Every stage in order, each on the XML the accepted changes before it
    made; `strict`: the stages whose new findings are not left to later ones."""
    current_root, current = root, before
    changes: list[Change] = []
    rejected: list[Change] = []
    unfixed: list[Unfixed] = []
    accepted_targets: list[Finding] = []
    original = {f.key: f for f in before.findings}
    present = set(original)  # original findings the current XML still has
    pending: dict[tuple, tuple[Finding, Change]] = {}
    judged: dict[int, tuple[Analysis, list[Finding], list[Finding]]] = {}
    for fix_rule in FIX_RULES:
        rule = fix_rule.id
        if rule not in wanted_rules:
            continue
        now = {f.key for f in current.findings}
        targets = [f for f in current.findings if f.rule_id == rule and f.key in now]
        if not targets:
            continue
        try:
            proposal = planner_of(fix_rule)(current_root, current, targets, router)
        except Manual as exc:
            named = {u.finding.key for u in exc.unfixed}
            unfixed += exc.unfixed + [Unfixed(f, str(exc), "manual") for f in targets
                                      if f.key not in named]
            continue
        except (DomainXMLError, LookupError) as exc:
            unfixed += [Unfixed(f, f"the planned change is not valid: {exc}", "manual")
                        for f in targets]
            continue
        unfixed += proposal.unfixed
        change = Change(rule, proposal.summary, proposal.details, proposal.devices,
                        proposal.ops, proposal.targeted)
        try:
            new_root = apply_ops(current_root, proposal.ops)
            tidy = tidy_ops(current_root, new_root)
            if tidy:
                change.ops = proposal.ops + tidy
                new_root = apply_ops(new_root, tidy)
                change.details = change.details + [
                    f"removed pci controller index {op.key[1]}, which the change left empty"
                    if op.kind == "remove" else
                    f"pci controller index {op.key[1]} -> {op.index} (no gap in the indexes)"
                    for op in tidy]
            new_xml = serialize(new_root)
            after = analyzer.analyse(new_root)
        except (DomainXMLError, LookupError) as exc:
            change.checks = [Check("reanalysis", False, f"the changed XML is not a domain: {exc}")]
            rejected.append(change)
            unfixed += [Unfixed(f, change.checks[0].detail, "unverified") for f in proposal.targeted]
            continue
        # The offer is the accumulated XML: it must keep every earlier fix too.
        # What an earlier change introduced and left to a later one is not
        # this change's new finding.
        owed = [f for f, _ in pending.values()]
        targeted = accepted_targets + proposal.targeted
        change.checks = check(before, after, new_xml, targeted, owed,
                              _later(fix_rule, wanted_rules, strict.get(rule)))
        after_keys = {f.key for f in after.findings}
        back = [original[k] for k in sorted(set(original) - present) if k in after_keys]
        if back:
            change.checks.append(Check("claims", False, "brings back " + ", ".join(
                f"{describe_finding(f)} ({f.message})" for f in back)
                + ", which an earlier change resolved"))
        if change.verified:
            change.resolves = [f for k, f in original.items() if k in present and k not in after_keys]
            present &= after_keys
            for key in [k for k in pending if k not in after_keys]:
                finding, by = pending.pop(key)
                by.introduces.append(Introduced(finding, rule))
            # Accepted with new findings: the check left each to a later stage.
            for f in verify_module.new_findings(before, after, owed):
                pending[f.key] = (f, change)
            judged[id(change)] = (after, targeted, owed)
            changes.append(change)
            accepted_targets += proposal.targeted
            current_root, current = new_root, after
        else:
            rejected.append(change)
            failed = "; ".join(f"{c.name}: {c.detail}" for c in change.checks if not c.ok)
            unfixed += [Unfixed(f, f"the planned change failed verification ({failed})",
                                "unverified") for f in proposal.targeted]
    return _Pass(current_root, current, changes, rejected, unfixed, pending, judged)


def fix_for_finding(plan: DomainPlan, finding: Finding) -> dict | None:
    """What advise's JSON can carry as "fix" for a finding: the verified
    change (schema vfio-advisor/fix/1 change object), or why there is none;
    None for rules without a domain XML fix."""
    if finding.rule_id not in FIXABLE_RULES:
        return None
    change = plan.fix_for_finding(finding)
    if change is not None:
        return {"verified": True, **change.to_json()}
    left = plan.unfixed_for_finding(finding)
    if left is None:
        return {"verified": False, "rule": finding.rule_id, "kind": "not-planned",
                "reason": "not planned (filtered by --rule)"}
    return {"verified": False, "rule": finding.rule_id, "kind": left.kind, "reason": left.reason}


__all__ = ["Analysis", "Analyzer", "Change", "DomainPlan", "FIXABLE_RULES", "FIX_RULES", "Introduced",
           "Manual", "RULE_ORDER", "Unfixed", "describe_finding", "fix_for_finding", "plan_domain"]
