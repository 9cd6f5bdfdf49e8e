"""Rule: data plus a pure check over facts."""

from __future__ import annotations

import re
from typing import Callable, Iterable, NamedTuple

from vfio_advisor.findings import Finding, Severity

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

    def named_in(self, names) -> bool:
        """Is this rule among `names` (IDs or slugs, as configs and <metadata> give them)?"""
        return self.id in names or self.slug in names

    @property
    def family(self) -> str:
        return FAMILIES[int(self.id[2])]
