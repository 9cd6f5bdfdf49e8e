"""The one place where `fix` touches the core (issue 11 moves engine types to
vfio_advisor/facts/model.py and splits the rules; repoint the imports here).

Everything else in vfio_advisor/fix/ imports core code only through this
module: parsing a domain XML, the guest INTx routing model, gathering host
facts once and analysing a domain XML against them.
"""

from __future__ import annotations

from typing import NamedTuple

from vfio_advisor.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, DEFAULTS, Config, load_config
from vfio_advisor.engine import Engine
from vfio_advisor.errors import ConnectionFailed, DomainXMLError, UsageError
from vfio_advisor.facts.domain import Domain, PciAddress, parse_domain_xml
from vfio_advisor.facts.guest_intx import (
    I440FX_PIRQ_IRQ, PIRQS, QEMU_MODEL_MSI, GuestFunction, GuestIntxMap, build_guest_intx_map,
    i440fx_pirq, q35_pirq,
)
from vfio_advisor.facts.model import DomainFacts
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules import RULES_BY_ID, lookup as lookup_rule
from vfio_advisor.rules.topology import fix_pointer
from vfio_advisor.sources import DEFAULT_URI, MAX_XML_BYTES, open_host_root

__all__ = [
    "Analyzer", "Analysis", "Config", "ConnectionFailed", "DEFAULT_CONFIG_PATH", "DEFAULT_STATE_DIR",
    "DEFAULT_URI", "Domain", "DomainFacts", "MAX_XML_BYTES",
    "DomainXMLError", "Finding", "GuestFunction", "GuestIntxMap", "I440FX_PIRQ_IRQ", "PIRQS",
    "PciAddress", "QEMU_MODEL_MSI", "RULES_BY_ID", "Severity", "UsageError",
    "build_guest_intx_map", "fix_pointer", "i440fx_pirq", "lookup_rule", "open_host_root", "parse_domain_xml",
    "q35_pirq", "load_config",
]


class Analysis(NamedTuple):
    domain: Domain
    facts: DomainFacts
    findings: tuple[Finding, ...]

    def host_pins(self) -> dict[str, int | None]:
        """Host BDF -> the INTx pin vfio-pci gives the guest (None: unknown)."""
        return {d.address: (d.device.guest_pin if d.device else None) for d in self.facts.devices}


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

    def analyse(self, xml: str | bytes) -> Analysis:
        domain = parse_domain_xml(xml)
        facts, findings = self.engine.analyse(domain)
        return Analysis(domain, facts, tuple(findings))
