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
    host = facts.host
    if facts.devices and host.interrupts_problem:
        yield device_finding(
            "VA8002", facts, None,
            f"Host interrupts could not be read ({host.interrupts_problem}); interrupt "
            "mode and line sharing were not checked.",
            _DAMAGED_REMEDY if host.interrupts_damaged else
            "Run where /proc/interrupts is readable (not under ProcSubset=pid).",
            {"proc/interrupts": host.interrupts_problem})
    elif facts.devices and host.interrupts is not None and host.interrupts.skipped:
        yield _rows_unread(facts, host.interrupts.skipped)
    if facts.devices and host.sample_problem and host.interrupts is not None:
        yield device_finding(
            "VA8002", facts, None,
            f"The second reading of /proc/interrupts (--sample) failed ({host.sample_problem}): "
            "no interrupt counter's rise over the sample was measured; mode and line sharing "
            "were checked on the first reading.",
            "Run again; if the second reading keeps failing on a live host, report it with a "
            "snapshot (vfio-advisor snapshot).",
            {"proc/interrupts (second reading)": host.sample_problem})


# Why rows come out damaged, for the remedy: the header and each row list
# the CPUs online when each is printed (kernel/irq/proc.c show_interrupts),
# and a long file is read in several chunks, so a CPU going on- or offline
# during the read changes the count columns part-way; a recorded file may
# also have been cut or edited.
_DAMAGED_REMEDY = (
    "If /proc/interrupts comes from a recorded host tree or snapshot, record it again "
    "(vfio-advisor snapshot); a live host's is never empty. If a live host's keeps failing, "
    "report it with a snapshot.")
_ROWS_REMEDY = (
    "Run again: on a live host a CPU brought online or offline while /proc/interrupts is read "
    "changes the number of count columns part-way. " + _DAMAGED_REMEDY)


def _rows_unread(facts: DomainFacts, skipped) -> Finding:
    """VA8002 for rows of /proc/interrupts not read whole: the rows the
    daemon's VA8003 counts (facts.interrupts.SkippedRow), and whose checks
    they cost. A device with a row among them is judged as with no table at
    all (model.device_interrupts); the others keep their verdicts."""
    shown = "; ".join(str(r) for r in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    rows = f"{len(skipped)} /proc/interrupts row{'s' if len(skipped) != 1 else ''}"
    unread = facts.interrupts_unread()
    if unread:
        names = ", ".join(d.address for d in unread)
        told = (f"interrupt mode and line sharing of {names} were not checked: "
                f"{'its rows' if len(unread) == 1 else 'their rows'} may be among them")
    else:
        told = "the rows of this domain's devices were read whole, and their checks stand"
    return device_finding(
        "VA8002", facts, None,
        f"{rows} could not be read whole ({shown}); {told}.",
        _ROWS_REMEDY, {"proc/interrupts": shown})


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
         "64 bytes, without the MSI, MSI-X and PCIe capabilities. It also says so when "
         "/proc/interrupts has no rows, or rows it could not read whole (a count that is "
         "not a number, more count columns than CPUs, a row cut short): a device whose rows "
         "may be among them is neither called idle nor free of INTx, and advise exits 2.",
         "Run as root.",
         _id("d92502904c274f179326771266394df5"), check_facts_incomplete,
         fires_on=("config-64-bytes", "config-truncated-40-bytes", "config-255-bytes",
                   "capability-list-loops", "intx-row-garbled", "other-row-garbled",
                   "proc-interrupts-empty"),
         silent_on=("hostdev-missing", "gpu-audio-msi")),
    Rule("VA8003", "interrupt-rows-skipped", Severity.INFO,
         "Some /proc/interrupts rows could not be read",
         "The daemon found rows in /proc/interrupts it could not parse (cut off, or in a "
         "format it does not know) and skips them. It says so once, not at every sample.",
         "If vfio rows are among them, report it with a snapshot (vfio-advisor snapshot).",
         _id("f331f323c1874b3198add8a8302467e2"), None, scope="domain",
         transition=rows_skipped, initial=False, fires_on=('rt-rows-cut',), silent_on=('rt-rows-clean',)),
)
