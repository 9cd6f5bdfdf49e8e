"""The engine session: gather facts once, run every rule, return findings.

The hook, the daemon and the CLI all go through `Engine`; none of them
assembles readers, picks pci.ids or applies a rule by itself.
"""

from __future__ import annotations

from typing import Callable, Iterable

from vfio_advisor.config import DEFAULTS, Config, IgnorePolicy
from vfio_advisor.facts.domain import Domain
from vfio_advisor.facts.gather import DeviceCache, gather_domain, gather_host, read_interrupts
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.model import (
    AssignedDevice, DomainFacts, HostFacts, HostInterrupts, device_interrupts,
)
from vfio_advisor.facts.pci import PciDevice
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.findings import Finding
from vfio_advisor.rules import RULES, internal_error

__all__ = ["Engine", "run_rules", "AssignedDevice", "DomainFacts", "HostFacts", "HostInterrupts",
           "DeviceCache", "gather_domain", "gather_host", "read_interrupts"]


def load_pci_ids(host: HostRoot, record: bool = False) -> PciIds:
    """pci.ids, chosen one way: the host tree's own (a recorded tree or
    snapshot may carry one), else this machine's. A recording run (snapshot)
    reads none, so the archive does not carry the 1.3 MB names file."""
    if record:
        return PciIds(None)
    return PciIds.load(host, HostRoot("/"))


class Engine:
    """One session over one host tree and one config.

    `host()` reads the host-wide facts once per session (`sample=` seconds
    between two reads of /proc/interrupts); `analyse(domain)` gathers the
    domain's facts and applies every static rule under the config's ignore
    policy; `device(bdf)` reads one host device and its interrupts.
    """

    def __init__(self, host_root: str | HostRoot = "/", config: Config = DEFAULTS,
                 record: bool = False, pci_ids: PciIds | None = None):
        self.root = host_root if isinstance(host_root, HostRoot) else HostRoot(host_root, record=record)
        self.config = config
        self.pci_ids = pci_ids if pci_ids is not None else load_pci_ids(self.root, record)
        self.devices = DeviceCache(self.root, self.pci_ids)
        self._host: HostFacts | None = None
        # Every defined domain the caller knows of (advise); the hook knows
        # only its own and leaves this empty (it must never call libvirt).
        self.defined: tuple[Domain, ...] = ()

    def set_defined_domains(self, domains: Iterable[Domain]) -> None:
        """The defined domains whose devices may run at the same time as the
        analysed one: the cross-domain INTx line check (VA2005) reads them."""
        self.defined = tuple(domains)

    @property
    def policy(self) -> IgnorePolicy:
        return self.config.policy

    def host(self, sample: float | None = None,
             progress: Callable[[float], None] | None = None, fresh: bool = False) -> HostFacts:
        if self._host is None or fresh or sample:
            self._host = gather_host(self.root, sample, progress)
        return self._host

    def gather(self, domain: Domain) -> DomainFacts:
        return gather_domain(domain, self.host(), self.devices, self.defined)

    def analyse(self, domain: Domain) -> tuple[DomainFacts, list[Finding]]:
        facts = self.gather(domain)
        return facts, run_rules(facts, policy=self.policy)

    def device(self, bdf: str) -> tuple[PciDevice | None, str | None, HostInterrupts]:
        """(device or None, why it is missing, its interrupts now)."""
        device, problem = self.devices.get(bdf)
        host = self.host()
        return device, problem, device_interrupts(bdf, device, host.interrupts, host.later)


def run_rules(facts: DomainFacts, rules: Iterable | None = None,
              policy: IgnorePolicy = IgnorePolicy()) -> list[Finding]:
    """Every static rule (`check`) not ignored for this domain by `policy`
    (which always includes the domain's own <metadata> ignores)."""
    findings: list[Finding] = []
    for rule in rules if rules is not None else RULES:
        if rule.check is None or policy.ignores_rule(rule, facts.domain):
            continue
        try:
            findings.extend(rule.check(facts))
        except Exception as exc:  # noqa: BLE001 - one broken rule must not hide the others
            findings.append(internal_error(facts.domain.name, f"{rule.id} failed: {exc!r}"))
    findings.sort(key=Finding.sort_key)
    return findings
