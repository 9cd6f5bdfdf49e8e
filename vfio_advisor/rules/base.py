"""Rule: data plus a pure check over facts."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple

from vfio_advisor.findings import Finding, Severity

if TYPE_CHECKING:
    from vfio_advisor.rules.remedies import Fix

SEED_ARTICLE = "https://vfio.blogspot.com/2014/09/vfio-interrupts-and-how-to-coax-windows.html"


def message_id(hexstr: str) -> str:
    """A rule's journald MESSAGE_ID, checked where it is written."""
    # Kept as text: importing uuid costs the hook a platform.system() call.
    if len(hexstr) != 32 or int(hexstr, 16) == 0:
        raise ValueError(f"bad MESSAGE_ID {hexstr!r}")
    return hexstr


RULE_ID_RE = re.compile(r"^VA[1-9]\d{3}$")
SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

# Families, by the thousands digit of the ID. IDs are never reused; a retired
# rule keeps its number in RETIRED (flake8 left F703 as a gap the same way).
FAMILIES = {
    1: "interrupt mode (INTx vs MSI/MSI-X)",
    2: "host INTx line sharing",
    3: "host platform: MSI, IOMMU, interrupt remapping",
    4: "guest topology: chipset, slots, irqchip",
    5: "guest INTx routing: PIRQ links and guest lines",
    6: "runtime: what running guests do with their interrupts (daemon)",
    8: "coverage: host checks that could not run",
    9: "internal",
}


class Rule(NamedTuple):
    id: str
    slug: str
    severity: Severity
    title: str  # one line; the catalog's Subject
    explanation: str  # what happens and why it matters
    remedy: str  # generic; findings may carry a specific one
    message_id: str  # 32 hex digits, fixed forever (journalctl --new-id128)
    check: Callable[..., Iterable[Finding]] | None  # None: raised by the engine itself
    # Names of examples (tests/rules/examples.py) on which it must / must not fire.
    fires_on: tuple[str, ...] = ()
    silent_on: tuple[str, ...] = ()
    documentation: tuple[str, ...] = ()
    # "device": findings name a host device (VFIO_ADVISOR_HOST_BDF is set);
    # "domain": they are about the domain or host as a whole.
    scope: str = "device"

    # Guest-routing rules (VA5xxx and the like): the report lists their
    # findings next to the guest routing table (sinks/report.py).
    routing: bool = False
    # Runtime rules (rules/stepping.py): a pure transition over the rule's own
    # state slot and the device's (or host's) sample; None for static rules.
    transition: Callable[..., object] | None = None
    # The planner that computes an exact fix of this rule's findings
    # (rules/remedies.py Fix); None for rules without one.
    fix: Fix | None = None
    initial: object = None  # the slot's value when a domain run starts
    # (slot, DeviceState) -> does an emitted finding still hold? None: it
    # stays open while its domain (or, host-wide, the daemon) runs.
    holds: Callable[[object, object], bool] | None = None
    # Finding -> key: findings with one key are said once per sample.
    said_key: Callable[[Finding], str] | None = None
    # (DeviceState, DeviceSample, config) -> the note when the transition
    # holds its finding back (its slot enters stepping.HELD).
    held_back: Callable[..., str] | None = None
    # (state file key, slot -> value): what the next run of the domain reads
    # back in DeviceSample.previous_run.
    remembered: tuple[str, Callable[[object], object]] | None = None
    # (slot, DeviceState, DeviceSample, config) -> True when the transition
    # returns the slot unchanged and no finding at every later sample in
    # which the device keeps state.mode and its vectors, and the sample's
    # per-run parts stay as `sample` has them, whatever its counts do: the
    # stepper then skips it (stepping.py, "Resting"). None: it never rests.
    rests: Callable[..., bool] | None = None
    # IDs of the rules whose finding this one builds on (VA1002, the way to
    # VA1001's guest-side fix, means nothing without VA1001). Whatever
    # silences one of them (disabled_rules, [domains.NAME] ignore,
    # <metadata>) silences this rule too: IgnorePolicy.ignores_rule, the one
    # policy of hook, advise, fix and daemon.
    builds_on: tuple[str, ...] = ()

    def finding(self, domain: str | None, subject: str | None, message: str,
                remedy: str | None = None, guest_address: str | None = None,
                evidence: dict[str, str] | tuple = ()) -> Finding:
        """A finding of this rule; `remedy` defaults to the rule's generic one."""
        if isinstance(evidence, dict):
            evidence = tuple(evidence.items())
        return Finding(self.id, domain, subject, message, remedy or self.remedy, guest_address,
                       tuple(evidence), self.severity, self.slug, self.title, self.message_id,
                       self.fix.pointer(domain) if self.fix else "")

    def named_in(self, names) -> bool:
        """Is this rule among `names` (IDs or slugs, as configs and <metadata> give them)?"""
        return self.id in names or self.slug in names

    def silenced_by(self, names) -> bool:
        """named_in(), or a rule it builds on is silenced by `names`."""
        return self.named_in(names) or any(_REGISTERED[rule_id].silenced_by(names)
                                           for rule_id in self.builds_on)

    @property
    def family(self) -> str:
        return FAMILIES[int(self.id[2])]


# Every rule by ID, filled as the family modules define their rules; the
# public registry (rules/__init__.py) is built from the family tuples.
_REGISTERED: dict[str, Rule] = {}


def register(*rules: Rule) -> tuple[Rule, ...]:
    """A family module's rules, made known to `device_finding`."""
    for rule in rules:
        if rule.id in _REGISTERED:
            raise ValueError(f"rule {rule.id} defined twice")
        missing = [rule_id for rule_id in rule.builds_on if rule_id not in _REGISTERED]
        if missing:  # registered first, so silenced_by() cannot loop
            raise ValueError(f"rule {rule.id} builds on {missing}, not registered before it")
        _REGISTERED[rule.id] = rule
    return rules


def device_finding(rule_id: str, facts, dev, message: str, remedy: str | None = None,
                   evidence: dict[str, str] | None = None, guest_address: str | None = None) -> Finding:
    """A finding of `rule_id` about `dev` (an AssignedDevice; None for the
    domain as a whole, or for an emulated device, which `guest_address`
    then names) in the domain of `facts` (DomainFacts)."""
    return _REGISTERED[rule_id].finding(facts.domain.name, dev.address if dev else None, message,
                                        remedy, dev.guest_address if dev else guest_address,
                                        evidence or ())
