"""Prometheus text exposition of the daemon's state, for node_exporter's
textfile collector. Pure: it formats what it is given and reads nothing.

Metrics (docs/metrics.md lists each with its labels, cardinality bound and
example PromQL):

  vfio_advisor_device_interrupts_total{domain,bdf,mode}    counter
  vfio_advisor_device_interrupts_observable{domain,bdf}    gauge 0/1
  vfio_advisor_device_mode{domain,bdf,mode}                gauge 0/1
  vfio_advisor_findings{domain,rule,severity}              gauge
  vfio_advisor_last_sample_timestamp_seconds               gauge
  vfio_advisor_build_info{version}                         gauge 1

Why a counter and not a rate: Prometheus computes rates itself with rate(),
over any window, and survives a missed scrape; a pre-computed rate loses
what happened between two scrapes. The counter is the sum of the kernel's
cumulative per-CPU counts of the device's vfio vectors (/proc/interrupts or
/sys/kernel/irq/N/per_cpu_count): it falls when a vector is freed and
reallocated (the guest re-enables MSI-X, the domain restarts), which rate()
treats as a counter reset. `mode` is a label of the counter because each
mode has its own vectors: a switch from INTx to MSI ends one series and
starts another instead of mixing two different counts.

Vectors the host cannot count (posted interrupts: with VT-d PI or AMD AVIC,
KVM's irq bypass has the IOMMU deliver MSI/MSI-X straight to the vCPU and the
host's vfio handler never runs, so its count stays flat) have
interrupts_observable 0 and NO interrupts_total sample: a 0 would read as
"no interrupts" and a flat counter as rate 0.

Format: https://prometheus.io/docs/instrumenting/exposition_formats/
(text format 0.0.4): label values escape backslash, double quote and line
feed; HELP text escapes backslash and line feed.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Iterable, NamedTuple

# Re-exported: the exposition's input type and the one atomic writer live at the sinks' base.
from vfio_advisor.sinks.base import OpenFinding, write_atomically  # noqa: F401

# The fixed set of `mode` label values: vfio-pci's three interrupt types
# (vfio-intx / vfio-msi[N] / vfio-msix[N] handlers), "none" for a device
# with no vfio vector set up (the guest driver has not enabled any), and
# "unknown" before the first sample or while /proc/interrupts is unreadable.
MODES = ("intx", "msi", "msix", "none", "unknown")
# Modes with vectors to count: "none" and "unknown" have no counter series.
COUNTED_MODES = ("intx", "msi", "msix")
SEVERITIES = ("info", "warning", "error")
PREFIX = "vfio_advisor_"


class DeviceMetrics(NamedTuple):
    """One assigned device of one running domain, as of the last sample."""

    domain: str
    bdf: str  # host PCI address, 0000:01:00.0
    mode: str  # one of MODES
    # Cumulative count summed over CPUs and over the device's vectors of this
    # mode; None when not known. Not exported when unobservable, or for the
    # modes "none" and "unknown" (no vector to count).
    interrupts_total: int | None
    observable: bool = True  # False: posted interrupts, the host cannot count


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return _label_text(tuple(labels.items()))


def _label_string(pairs: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs) + "}"


# The findings' and the version's label sets: the same few at every sample
# (their number is bounded: docs/metrics.md), so each is escaped once. A
# device's label sets are kept in its lines (_device_lines).
_label_text = functools.lru_cache(maxsize=1024)(_label_string)


# A device's lines but its count are the same at every sample until its mode
# changes: they are built once per (domain, bdf, mode, observable). Sized
# for 2,048 devices with a mode change each; an entry is about 1 KiB.
@functools.lru_cache(maxsize=4096)
def _device_lines(domain: str, bdf: str, mode: str, observable: bool) -> tuple[str, str, str]:
    """(the interrupts_total line up to its value, the interrupts_observable
    line, the device_mode lines joined by newlines)."""
    device = (("domain", domain), ("bdf", bdf))
    total_head = f"{PREFIX}device_interrupts_total{_label_string((*device, ('mode', mode)))} "
    observable_line = f"{PREFIX}device_interrupts_observable{_label_string(device)} {1 if observable else 0}"
    mode_lines = "\n".join(f"{PREFIX}device_mode{_label_string((*device, ('mode', m)))} {1 if mode == m else 0}"
                           for m in MODES)
    return total_head, observable_line, mode_lines


def _family(lines: list[str], name: str, kind: str, help_text: str, samples: list[str]) -> None:
    # HELP and TYPE even for an empty family: promtool and Prometheus accept
    # it, and the file then always documents every metric it can carry.
    lines.append(f"# HELP {PREFIX}{name} {help_text}")
    lines.append(f"# TYPE {PREFIX}{name} {kind}")
    lines.extend(samples)


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


# A device's sort key, (domain, bdf): the first two fields of DeviceMetrics.
_BY_DEVICE = operator.itemgetter(0, 1)


class Kept:
    """What render() may keep from one call to the next (the metrics sink
    holds one): each device's kept lines (_device_lines) of the last call,
    and the interrupts_observable and device_mode samples joined. Those two
    families change only when a device's mode or observability does, or a
    device comes or goes: at 512 devices they are 3,072 of the file's 3,600
    lines, joined anew at every sample before."""

    __slots__ = ("entries", "observables", "modes")

    def __init__(self):
        self.entries: list | None = None
        self.observables = self.modes = ""


def render(devices: Iterable[DeviceMetrics], findings: Iterable[OpenFinding], now: float,
           version: str, kept: Kept | None = None) -> str:
    """The exposition text. `devices` are DeviceMetrics, or tuples of its
    fields in its order (what the metrics sink passes: no NamedTuple to
    build per device). `now` is the last sample's wall-clock time (Unix
    seconds, time.time(); not the monotonic clock the Watcher uses).
    `kept`: what the last call with it kept (Kept); the text is the same
    with or without."""
    if not math.isfinite(now):
        raise ValueError(f"sample timestamp is not a finite number: {now!r}")
    totals, entries = [], []
    last_domain = last_bdf = None
    for domain, bdf, mode, interrupts_total, observable in sorted(devices, key=_BY_DEVICE):
        if mode not in MODES:
            raise ValueError(f"device {bdf} of {domain!r}: mode {mode!r} is not one of {', '.join(MODES)}")
        if bdf == last_bdf and domain == last_domain:  # sorted: a device given twice comes twice in a row
            raise ValueError(f"device {bdf} of {domain!r} given twice")
        last_domain, last_bdf = domain, bdf
        observable = bool(observable)
        entry = _device_lines(domain, bdf, mode, observable)
        if observable and interrupts_total is not None and mode in COUNTED_MODES:
            if interrupts_total < 0:
                raise ValueError(f"device {bdf} of {domain!r}: negative interrupt count")
            totals.append(entry[0] + _number(interrupts_total))
        entries.append(entry)
    if kept is not None and kept.entries == entries:  # the same lines, mostly the same objects
        observables, modes = kept.observables, kept.modes
    else:
        observables = "\n".join([entry[1] for entry in entries])
        modes = "\n".join([entry[2] for entry in entries])
        if kept is not None:
            kept.entries, kept.observables, kept.modes = entries, observables, modes

    counts: dict[tuple[str, str, str], int] = {}
    for f in findings:
        if f.severity not in SEVERITIES:
            raise ValueError(f"finding {f.rule}: severity {f.severity!r} is not one of "
                             f"{', '.join(SEVERITIES)}")
        key = (f.domain or "", f.rule, f.severity)
        counts[key] = counts.get(key, 0) + 1
    finding_lines = [f"{PREFIX}findings{_labels(domain=d, rule=r, severity=s)} {n}"
                     for (d, r, s), n in sorted(counts.items())]

    lines: list[str] = []
    _family(lines, "device_interrupts_total", "counter",
            "Interrupts of an assigned device's vfio vectors in this mode, summed over CPUs "
            "(kernel counts; an INTx line's count includes its sharers).", totals)
    _family(lines, "device_interrupts_observable", "gauge",
            "1 if the host can count the device's interrupts, 0 if they are posted to the guest "
            "(then no interrupts_total sample).", [observables] if entries else [])
    _family(lines, "device_mode", "gauge",
            "Interrupt mode of an assigned device: 1 for the current mode, 0 for the others.",
            [modes] if entries else [])
    _family(lines, "findings", "gauge",
            "Open findings by domain, rule and severity (absent: none).", finding_lines)
    _family(lines, "last_sample_timestamp_seconds", "gauge",
            "Unix time of the daemon's last sample.", [f"{PREFIX}last_sample_timestamp_seconds {_number(now)}"])
    _family(lines, "build_info", "gauge", "vfio-advisor version; always 1.",
            [f"{PREFIX}build_info{_labels(version=version)} 1"])
    return "\n".join(lines) + "\n"
