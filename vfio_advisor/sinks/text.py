"""Terminal text for people: grouped by domain and device, one line per
finding with its remedy, ending with shellcheck-style "For details" lines.
Colour only on a TTY, and never with NO_COLOR set (https://no-color.org)."""

from __future__ import annotations

import os
import textwrap
import unicodedata
from typing import TextIO

from vfio_advisor.facts.model import AssignedDevice
from vfio_advisor.facts.pci_config import UNKNOWN
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.sinks.base import ReportSink
from vfio_advisor.sinks.report import Report

_COLOURS = {Severity.ERROR: "\033[1;31m", Severity.WARNING: "\033[33m", Severity.INFO: "\033[36m"}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"


def use_colour(out: TextIO) -> bool:
    if "NO_COLOR" in os.environ and os.environ["NO_COLOR"] != "":
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def clean(text: str) -> str:
    """Replace control, format and line/paragraph-separator characters in
    data we did not write (domain, device and handler names) so they cannot
    move the cursor, recolour the terminal or start a line of their own.
    C1 controls (U+0080-U+009F, e.g. CSI) and U+2028/2029/0085 included;
    only "\n", which we write ourselves, stays."""
    return "".join(ch if ch == "\n" or unicodedata.category(ch) not in _UNSAFE else "?"
                   for ch in text)


_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp"})


class TextWriter:
    def __init__(self, out: TextIO, colour: bool | None = None, width: int = 100):
        self.out = out
        self.colour = use_colour(out) if colour is None else colour
        self.width = width

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.colour else text

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def finding(self, f: Finding, indent: str) -> None:
        sev = self._c(_COLOURS[f.severity], f"{str(f.severity):7}")
        self.line(f"{indent}{sev} {self._c(_BOLD, f.rule_id)} {clean(f.message)}")
        pad = indent + " " * 8
        remedy = clean(f.remedy + f.fix_pointer).split("\n")  # not splitlines(): it splits on U+2028 too
        for i, para in enumerate(remedy):
            lead = "fix: " if i == 0 else "     "
            if para.startswith("  "):  # code: keep as it is
                self.line(f"{pad}{lead}{para}")
                continue
            # No break at hyphens: a command such as `vfio-advisor fix NAME`
            # must stay one piece to be copied.
            wrapped = textwrap.wrap(para, self.width - len(pad) - 5,
                                    break_on_hyphens=False) or [""]
            self.line(f"{pad}{lead}{wrapped[0]}")
            for rest in wrapped[1:]:
                self.line(f"{pad}     {rest}")

    def device_line(self, dev: AssignedDevice) -> str:
        pci = dev.device
        guest = f" -> guest {dev.guest_address}" if dev.guest_address else " -> guest (auto)"
        if pci is None:
            return f"{dev.address}{guest}  not found on this host"
        caps = []
        if pci.config is not None:
            for label, value in (("MSI", pci.config.msi), ("MSI-X", pci.config.msix)):
                if value is UNKNOWN:
                    caps.append(f"{label}?")
                elif value:
                    caps.append(label)
            if pci.config.intx_pin_letter:
                caps.append(f"INT{pci.config.intx_pin_letter}")
        irq = dev.interrupts
        now = {"intx": f"on INTx (IRQ {irq.intx_irq})", "msi": "on MSI", "msix": "on MSI-X",
               "none": "idle", "unknown": "mode unknown"}[irq.mode]
        if irq.mode in ("msi", "msix") and irq.irqs:
            now += f" ({len(irq.irqs)} vector{'s' if len(irq.irqs) != 1 else ''})"
        if irq.shared_with:
            now += f", line shared with {', '.join(irq.shared_with)}"
        return (f"{self._c(_BOLD, dev.address)}{guest}  {clean(pci.name)}  "
                f"[{' '.join(caps) or ('capabilities unreadable' if pci.config is None else 'no INTx/MSI')}; "
                f"{clean(pci.driver or 'no driver')}; {clean(now)}]")

    def write(self, report: Report) -> None:
        # report.errors are not the report's: `advise` prints each on
        # stderr, as every command prints its error lines.
        for d in report.domains:
            dom = d.facts.domain
            self.line(self._c(_BOLD, f"{clean(dom.name)}") + self._c(
                _DIM, f"  {dom.chipset} ({clean(dom.machine or 'no machine type')}), "
                      f"guest OS {dom.guest_os}, {len(d.facts.devices)} assigned PCI device"
                      f"{'s' if len(d.facts.devices) != 1 else ''}"))
            for f in d.findings:
                if f.subject is None:
                    self.finding(f, "  ")
            for dev in d.facts.devices:
                self.line(f"  {self.device_line(dev)}")
                for f in d.findings:
                    if f.subject == dev.address:
                        self.finding(f, "    ")
            if not d.findings:
                self.line("  " + self._c(_DIM, "no findings"))
            self.line()
        counts = {s: 0 for s in Severity}
        for f in report.findings:
            counts[f.severity] += 1
        self.line(f"{len(report.domains)} domain{'s' if len(report.domains) != 1 else ''}: "
                  f"{counts[Severity.ERROR]} error, {counts[Severity.WARNING]} warning, "
                  f"{counts[Severity.INFO]} info")
        titles = {f.rule_id: f.title for f in report.findings}
        if titles:
            self.line("For details:")
            for rule_id in sorted(titles):
                self.line(f"  vfio-advisor explain {rule_id} -- {titles[rule_id]}")


def write_text(report: Report, out: TextIO, colour: bool | None = None) -> None:
    TextWriter(out, colour).write(report)


def write_guest_irqs(doc: dict, out: TextIO) -> None:
    """The guest interrupt map as a table, one row per guest PCI function."""
    line_word = "GSI" if doc["chipset"] == "q35" else "IRQ"
    out.write(f"{clean(doc['domain'])}: {doc['chipset']} ({clean(doc['machine'] or '?')})\n")
    header = ("guest addr", "what", "pin", "root", "link", line_word, "shares with")
    rows = []
    for fn in doc["functions"]:
        what = (f"hostdev {fn['host_address']}" if fn["kind"] == "hostdev"
                else f"{fn['model']}")
        root = (f"{fn['root_slot']:02x}/{fn['root_pin']}" if fn["root_slot"] is not None
                and fn["root_pin"] else "-")
        unknown = any(n.startswith("INTx pin unknown") for n in fn["notes"])
        irq = str(fn["irq"]) if fn["irq"] is not None else ("?" if fn["pin"] or unknown else "-")
        sharers = [a[5:] for a in fn["shares_with"]]
        if len(sharers) > 4:
            sharers = sharers[:4] + [f"+{len(sharers) - 4} more"]
        rows.append((fn["guest_address"][5:], clean(what)[:40],
                     fn["pin"] or ("?" if unknown else "-"), root,
                     fn["pirq"] or "-", irq, ", ".join(sharers) or "-"))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        out.write("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    notes = {n for fn in doc["functions"] for n in fn["notes"]}
    for n in sorted(notes):
        out.write(f"  note: {clean(n)}\n")
    for a in doc["unaddressed"]:
        out.write(f"  not yet addressed (libvirt assigns at define): {clean(a)}\n")
    for f in doc["findings"]:
        out.write(f"  {f['severity']} {f['rule']} {clean(f['message'])}\n")


class TextSink(ReportSink):
    """`advise` for people (TextWriter)."""

    def render(self) -> None:
        write_text(self.report, self.out)


def write_device(e: dict, out: TextIO) -> None:
    """One entry of `vfio-advisor device` (host_device_json) for people."""
    if "error" in e:
        out.write(f"{e['host_address']}: {clean(e['error'])}\n")
        return
    caps = e["capabilities"] or {}

    # Why the capabilities are unknown: damaged bytes, or a reader without
    # CAP_SYS_ADMIN, to whom the kernel gives only the first 64 bytes
    # (drivers/pci/pci-sysfs.c pci_read_config) - not a truncated file.
    unread = next((u for u in e["unreadable"] if u.startswith("capabilities unreadable: ")),
                  None) or next((u.removeprefix("config: ").split("; ")[0]
                                 for u in e["unreadable"] if u.startswith("config: ")), None)

    def show(v, fmt):
        if v == "unknown":
            return f"unknown ({clean(unread) if unread else 'capabilities not read'})"
        return "absent" if v is None else fmt(v)

    irq = e["host_interrupts"]
    lines = [
        f"{e['host_address']}  {clean(e['name'] or '?')}  [{e['vendor_id']}:{e['device_id']}] class {e['class']}",
        f"  driver: {clean(e['driver'] or 'none')}   "
        f"IOMMU group: {'none' if e['iommu_group'] is None else e['iommu_group']} "
        f"({clean(', '.join(e['iommu_group_members'])) or '-'})",
        "  MSI: " + show(caps.get("msi"), lambda m: "%d vector(s), 64bit=%s, maskable=%s, enabled=%s"
                         % (m["vectors"], m["64bit"], m["maskable"], m["enabled"])),
        "  MSI-X: " + show(caps.get("msix"), lambda m: "table size %d, enabled=%s"
                           % (m["table_size"], m["enabled"])),
        "  PCIe: " + show(caps.get("pcie"), lambda c: "%s (cap v%d)" % (c["type"], c["version"])),
        f"  INTx pin: {caps.get('intx_pin') or 'none'}   host IRQ: {e['host_irq']}   "
        f"INTx masking: {e['intx_masking']['supported']} ({e['intx_masking']['evidence']})",
        f"  interrupts now: {irq['mode']}" + (f", IRQs {irq['irqs']}" if irq["irqs"] else "")
        + (", INTx line shared with " + clean(", ".join(irq["shared_with"])) if irq["shared_with"] else ""),
        f"  msi_bus: {e['msi_bus']}" + "".join(f", bridge {b}: {v}" for b, v in e["upstream_msi_bus"].items()),
        f"  config space: {caps.get('config_bytes', 0)} bytes readable",
    ]
    for item in e["unreadable"]:
        lines.append(f"  {clean(item)}" if item.startswith("capabilities unreadable: ")
                     else f"  could not read {clean(item)}")
    out.write("\n".join(lines) + "\n")
