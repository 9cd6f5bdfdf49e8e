"""Coverage (VA8xxx): host checks that could not run.

Each rule sits next to its check: data (ID, slug, severity, texts,
MESSAGE_ID) plus a pure check over DomainFacts, or, for what the daemon
finds while sampling (VA8003), a pure host-wide transition
(rules/stepping.py). No I/O here, and no libvirt: the hook runs these
inside libvirtd's start sequence.
"""

from __future__ import annotations

from typing import Iterator

from vfio_advisor.facts.model import DomainFacts
from vfio_advisor.facts.pci import CAPABILITIES_UNREADABLE, PciDevice
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules.base import _REGISTERED, Rule, device_finding, register
from vfio_advisor.rules.base import message_id as _id
from vfio_advisor.rules.stepping import HostSample


def check_hostdev_missing(facts: DomainFacts) -> Iterator[Finding]:
    for dev in facts.devices:
        if dev.device is None:
            yield device_finding(
                "VA8001", facts, dev,
                f"Host device {dev.address} ({dev.problem}): config space, interrupt and "
                "IOMMU checks were skipped for it.",
                "Check the <source><address> of this <hostdev> against lspci -D on the host; "
                "a moved card or a BIOS change renumbers buses.",
                {"sysfs": f"sys/bus/pci/devices/{dev.address}: {dev.problem}"})


def _incomplete_remedy(pci: PciDevice) -> str:
    """Root helps with what privilege hid; it does not help with damaged
    bytes (a config file cut where no sysfs read stops, a capability list
    that loops or points into the header), which root reads the same."""
    damaged = [u for u in pci.unreadable if CAPABILITIES_UNREADABLE in u]
    hidden = [u for u in pci.unreadable if CAPABILITIES_UNREADABLE not in u]
    parts = []
    if hidden:
        parts.append("Run as root (reading all of config space needs CAP_SYS_ADMIN).")
    if damaged:
        parts.append(
            f"The config space of {pci.address} is damaged, and root would read the same "
            "bytes. If it comes from a recorded host tree, record it again (a full read is "
            f"256 or 4096 bytes: sys/bus/pci/devices/{pci.address}/config, as root). On a "
            f"live host compare `lspci -vvv -s {pci.address}`: a capability list that loops "
            "or points into the header is a device or firmware fault, and the kernel cannot "
            "find MSI behind it either. Until then, checks that need the device's MSI, "
            "MSI-X or PCIe capabilities say nothing about it.")
    return " ".join(parts)


def check_facts_incomplete(facts: DomainFacts) -> Iterator[Finding]:
    for dev in facts.devices:
        if dev.device is not None and dev.device.unreadable:
            skipped = "; ".join(dev.device.unreadable)
            yield device_finding(
                "VA8002", facts, dev,
                f"Some facts of {dev.address} could not be read, and checks that need them "
                f"were skipped: {skipped}.",
                _incomplete_remedy(dev.device),
                {"unreadable": skipped})
    if facts.devices and facts.host.interrupts_problem:
        yield device_finding(
            "VA8002", facts, None,
            f"Host interrupts could not be read ({facts.host.interrupts_problem}); interrupt "
            "mode and line sharing were not checked.",
            "Run where /proc/interrupts is readable (not under ProcSubset=pid).",
            {"proc/interrupts": facts.host.interrupts_problem})


def rows_skipped(reported: bool, sample: HostSample, elapsed, config) -> tuple[bool, list[Finding]]:
    """VA8003, host-wide: rows the sampler could not read, said once per
    daemon run. `reported`: its slot, said already."""
    if not sample.rows_skipped or reported:
        return reported, []
    return True, [_REGISTERED["VA8003"].finding(
        None, None, f"{sample.rows_skipped} /proc/interrupts rows could not be read and are "
        "skipped (reported once).")]


RULES: tuple[Rule, ...] = register(
    Rule("VA8001", "hostdev-missing-on-host", Severity.WARNING,
         "Assigned device not found on this host: its checks were skipped",
         "The domain assigns a host PCI address that sysfs does not have. The domain will "
         "not start on this host as it is, and no host check could run for that device.",
         "Correct the <hostdev> source address.",
         _id("a88390d7eb3a46f6a0f72e25d39740cb"), check_hostdev_missing,
         fires_on=("hostdev-missing",), silent_on=("config-64-bytes", "gpu-audio-msi")),
    Rule("VA8002", "host-facts-incomplete", Severity.INFO,
         "Some host facts could not be read: the checks that need them were skipped",
         "The tool could not read part of what it needs, most often because it ran "
         "without root: an unprivileged read of a PCI config space returns only its first "
         "64 bytes, without the MSI, MSI-X and PCIe capabilities.",
         "Run as root.",
         _id("d92502904c274f179326771266394df5"), check_facts_incomplete,
         fires_on=("config-64-bytes", "config-truncated-40-bytes", "config-255-bytes",
                   "capability-list-loops"),
         silent_on=("hostdev-missing", "gpu-audio-msi")),
    Rule("VA8003", "interrupt-rows-skipped", Severity.INFO,
         "Some /proc/interrupts rows could not be read",
         "The daemon found rows in /proc/interrupts it could not parse (cut off, or in a "
         "format it does not know) and skips them. It says so once, not at every sample.",
         "If vfio rows are among them, report it with a snapshot (vfio-advisor snapshot).",
         _id("f331f323c1874b3198add8a8302467e2"), None, scope="domain",
         transition=rows_skipped, initial=False, fires_on=('rt-rows-cut',), silent_on=('rt-rows-clean',)),
)
