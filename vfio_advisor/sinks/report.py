"""The advice report as plain data: shared by the JSON and text sinks.

Schema "vfio-advisor/advice/1" is documented in docs/json-schema.md; field
names here are an API and change only with a new schema version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vfio_advisor import __version__
from vfio_advisor.facts.model import AssignedDevice, DomainFacts, HostFacts, HostInterrupts
from vfio_advisor.facts.guest_intx import PINS, PIRQS, GuestFunction, GuestIntxMap
from vfio_advisor.facts.pci import PciDevice
from vfio_advisor.facts.pci_config import UNKNOWN
from vfio_advisor.findings import Finding, Severity

ADVICE_SCHEMA = "vfio-advisor/advice/1"
GUEST_IRQS_SCHEMA = "vfio-advisor/guest-irqs/1"
DEVICE_SCHEMA = "vfio-advisor/device/1"


@dataclass
class DomainReport:
    facts: DomainFacts
    findings: list[Finding]
    # The "fix" object of each finding with a domain XML fix, keyed by
    # Finding.key: advise plans them (vfio_advisor/fix/advice.py);
    # a finding not in here has none (its "fix" is null).
    fixes: dict[tuple[str, str], dict | None] = field(default_factory=dict)

    def fix_of(self, f: Finding) -> dict | None:
        return self.fixes.get(f.key)


@dataclass
class Report:
    host_root: str
    host: HostFacts | None
    domains: list[DomainReport] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (source, one-line message)

    @property
    def findings(self) -> list[Finding]:
        return [f for d in self.domains for f in d.findings]

    def attach_fixes(self, fixes: dict[tuple[str, str], dict | None]) -> None:
        """The "fix" objects of the domain analysed last."""
        self.domains[-1].fixes = dict(fixes)

    @property
    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)


def _known(value, convert):
    if value is UNKNOWN:
        return "unknown"
    return None if value is None else convert(value)


def capabilities_json(device: PciDevice | None) -> dict | None:
    if device is None:
        return None
    cfg = device.config
    if cfg is None:
        return {"msi": "unknown", "msix": "unknown", "pcie": "unknown", "pm": "unknown",
                "intx_pin": "unknown", "config_bytes": 0}
    return {
        "msi": _known(cfg.msi, lambda m: {"64bit": m.is_64bit, "maskable": m.maskable,
                                          "vectors": m.vectors, "enabled": m.enabled}),
        "msix": _known(cfg.msix, lambda m: {"table_size": m.table_size, "enabled": m.enabled}),
        "pcie": _known(cfg.pcie, lambda p: {"type": p.port_type, "version": p.version}),
        "pm": _known(cfg.pm, lambda p: {"version": p.version}),
        "intx_pin": cfg.intx_pin_letter,
        "config_bytes": cfg.length,
    }


def guest_function_json(fn: GuestFunction, gmap: GuestIntxMap) -> dict:
    return {
        "guest_address": str(fn.guest_address),
        "kind": "emulated" if fn.kind == "implicit" else fn.kind,
        "host_address": fn.host_address,
        "model": fn.model,
        "pin": fn.pin_letter,
        "root_slot": fn.root_slot,
        "root_pin": PINS[fn.root_pin] if fn.root_pin is not None else None,
        "pirq": PIRQS[fn.pirq] if fn.pirq is not None else None,
        "irq": fn.irq if fn.predictable else None,
        "shares_with": [str(s.guest_address) for s in gmap.sharers(fn)],
        "notes": list(fn.notes),
    }


def errors_json(errors) -> list[dict]:
    """The documents' errors[] member: each (source, message) an input refused."""
    return [{"source": s, "message": m} for s, m in errors]


def guest_irqs_json(facts: DomainFacts | None, findings: list[Finding], routing: frozenset[str],
                    errors=(), domain: str | None = None) -> dict:
    """`routing`: IDs of the rules about guest routing (Rule.routing), whose
    findings go with the table. `facts` None: the document of a refused
    input (errors), its members empty, `domain` the name asked for."""
    if facts is None:
        return {"schema": GUEST_IRQS_SCHEMA, "domain": domain, "chipset": None, "machine": None,
                "functions": [], "unaddressed": [], "findings": [], "errors": errors_json(errors)}
    gmap = facts.guest_intx
    return {
        "schema": GUEST_IRQS_SCHEMA,
        "domain": facts.domain.name,
        "chipset": facts.domain.chipset,
        "machine": facts.domain.machine,
        "functions": [guest_function_json(fn, gmap) for fn in gmap.functions],
        "unaddressed": list(gmap.unaddressed),
        "findings": [finding_json(f) for f in findings if f.rule_id in routing],
        "errors": errors_json(errors),
    }


def finding_json(f: Finding) -> dict:
    return {
        "rule": f.rule_id,
        "slug": f.slug,
        "severity": str(f.severity),
        "subject": f.subject,
        "guest_address": f.guest_address,
        "message": f.message,
        "remedy": f.remedy + f.fix_pointer,
        "evidence": dict(f.evidence),
    }


def advice_finding_json(f: Finding, d: DomainReport) -> dict:
    """A finding of schema vfio-advisor/advice/1: "fix" is the verified change
    (schema vfio-advisor/fix/1 CHANGE, "verified": true), or why there is none
    ("verified": false), or null for rules without a domain XML fix."""
    return {**finding_json(f), "fix": d.fix_of(f)}


def device_json(device: PciDevice | None, address: str, nointxmask: bool = False,
                masking=None) -> dict:
    out = {
        "host_address": address,
        "name": device.name if device else None,
        "vendor_id": f"{device.vendor_id:04x}" if device and device.vendor_id is not None else None,
        "device_id": f"{device.device_id:04x}" if device and device.device_id is not None else None,
        "class": f"{device.class_code:06x}" if device and device.class_code is not None else None,
        "driver": device.driver if device else None,
        "iommu_group": device.iommu_group if device else None,
        "iommu_group_members": list(device.iommu_group_members) if device else [],
        "host_irq": device.irq if device else None,
        "msi_bus": device.msi_bus if device else None,
        "upstream_msi_bus": {b: v for b, v in device.upstream} if device else {},
        "capabilities": capabilities_json(device),
        "intx_masking": None,
        "unreadable": list(device.unreadable) if device else [],
    }
    if device is not None:
        m = masking or device.intx_masking(nointxmask)
        out["intx_masking"] = {"supported": m.supported, "evidence": m.evidence}
    return out


def host_device_json(address: str, device: PciDevice | None, problem: str | None,
                     irq: HostInterrupts, nointxmask: bool) -> dict:
    """One entry of `vfio-advisor device --format json` (DEVICE_SCHEMA)."""
    if device is None:
        return {"host_address": address, "error": problem}
    entry = device_json(device, address, nointxmask)
    entry["host_interrupts"] = {"mode": irq.mode, "irqs": list(irq.irqs), "intx_irq": irq.intx_irq,
                                "shared_with": list(irq.shared_with), "intx_count": irq.intx_count}
    return entry


def assigned_json(dev: AssignedDevice, findings: list[Finding], nointxmask: bool,
                  gmap: GuestIntxMap | None = None, report: DomainReport | None = None) -> dict:
    out = device_json(dev.device, dev.address, nointxmask, dev.intx_masking(nointxmask))
    fn = None
    if gmap is not None and dev.hostdev.guest is not None:
        fn = gmap.by_address().get(dev.hostdev.guest.address)
    out["guest_intx"] = guest_function_json(fn, gmap) if fn is not None else None
    irq = dev.interrupts
    out.update({
        "guest_address": dev.guest_address,
        "found_on_host": dev.device is not None,
        "host_interrupts": {
            "mode": irq.mode, "irqs": list(irq.irqs), "intx_irq": irq.intx_irq,
            "shared_with": list(irq.shared_with), "intx_count": irq.intx_count,
            "intx_delta": irq.intx_delta,
        },
        "findings": [advice_finding_json(f, report) if report is not None else finding_json(f)
                     for f in findings if f.subject == dev.address],
    })
    return out


def report_json(report: Report) -> dict:
    host = report.host
    summary = {str(s): 0 for s in Severity}
    for f in report.findings:
        summary[str(f.severity)] += 1
    return {
        "schema": ADVICE_SCHEMA,
        "tool": {"name": "vfio-advisor", "version": __version__},
        "host": None if host is None else {
            "root": report.host_root,
            "interrupt_remapping": host.interrupt_remapping,
            "iommu_groups": host.kernel.iommu_groups,
            "allow_unsafe_interrupts": host.kernel.allow_unsafe_interrupts,
            "cmdline": host.kernel.cmdline.raw if host.kernel.cmdline else None,
            "sample_seconds": host.sample_seconds,
            "interrupts_problem": host.interrupts_problem,
        },
        "domains": [{
            "name": d.facts.domain.name,
            "uuid": d.facts.domain.uuid,
            "machine": d.facts.domain.machine,
            "chipset": d.facts.domain.chipset,
            "guest_os": d.facts.domain.guest_os,
            "guest_os_evidence": d.facts.domain.guest_os_evidence,
            "devices": [assigned_json(dev, d.findings, d.facts.host.kernel.nointxmask,
                                      d.facts.guest_intx, d)
                        for dev in d.facts.devices],
            "findings": [advice_finding_json(f, d) for f in d.findings],
        } for d in report.domains],
        "errors": errors_json(report.errors),
        "summary": summary,
    }
