"""/proc/interrupts: a pure parser.

Row format (kernel/irq/proc.c, show_interrupts):
    "%*d: " IRQ, then one "%10u " count per online CPU, then the chip name,
    then (since Linux 3.11, with an irq domain) " %*lu" hwirq, then
    "-%-8s" the flow handler name (edge, level, fasteoi, ...), then
    "  name" for the first action and ", name" for each shared one.
Older kernels print "IR-IO-APIC-edge" with the flow glued to the chip.
Since Linux 6.2 PCI/MSI chips may carry the device ("IR-PCI-MSIX-0000:03:00.0").
Architecture rows (NMI, LOC, ERR, MIS, ...) have a name instead of a number
and free text after the counts; ERR and MIS have one count only.

vfio-pci names its handlers (drivers/vfio/pci/vfio_pci_intrs.c):
    "vfio-intx(%s)", "vfio-msi[%d](%s)", "vfio-msix[%d](%s)" with the BDF.
"""

from __future__ import annotations

from typing import NamedTuple

import re

_VFIO = re.compile(
    r"^vfio-(?P<mode>intx|msix|msi)(?:\[(?P<index>[0-9]{1,7})\])?"
    r"\((?P<bdf>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\)$")
# chip, optional hwirq, flow.  "IR-PCI-MSI 1572865-edge", "IO-APIC   2-edge",
# "IR-IO-APIC-edge" (pre-3.11), "PCI-MSIX-0000:00:09.0    0-edge".
_CHIP_HWIRQ_FLOW = re.compile(
    r"^(?P<chip>\S+)\s+(?P<hwirq>(?:0x)?[0-9a-fA-F]+)-(?P<flow>[A-Za-z]+)(?:\s+|$)")
_CHIP_FLOW = re.compile(r"^(?P<chip>\S+?)-(?P<flow>edge|level|fasteoi|simple|percpu|none)(?:\s+|$)")
# ARM/arm64 with CONFIG_GENERIC_IRQ_SHOW_LEVEL print "Level"/"Edge" as a word
# after the hwirq ("GICv2  30 Level  arch_timer"), kernel/irq/proc.c.
_CHIP_HWIRQ_LEVEL = re.compile(
    r"^(?P<chip>\S+)\s+(?P<hwirq>(?:0x)?[0-9a-fA-F]+)\s+(?P<flow>Level|Edge)(?:\s+|$)")
# Since Linux 3.11 a chip with an irq domain but no flow name ("intel-gpio   87  rt5682s").
_CHIP_HWIRQ = re.compile(r"^(?P<chip>\S+)\s+(?P<hwirq>(?:0x)?[0-9a-fA-F]+)(?:\s{2,}|$)")
# Flow handler names (kernel/irq/chip.c handle_*_irq, set via irq_set_chip_and_handler_name).
# Rows with one global count by design: x86's ERR and MIS
# (arch/x86/kernel/irq.c arch_show_interrupts), 32-bit ARM's Err
# (arch/arm/kernel/irq.c).
SINGLE_COUNT = frozenset({"ERR", "MIS", "Err"})
KNOWN_FLOWS = frozenset({"edge", "level", "fasteoi", "simple", "percpu", "percpu_devid",
                         "none", "bad", "edge-eoi", "fasteoi_ack", "untracked"})


class VfioHandler(NamedTuple):
    mode: str  # "intx" | "msi" | "msix"
    index: int | None  # vector index for msi/msix
    bdf: str


class IrqLine(NamedTuple):
    irq: str  # "16", "NMI", "LOC" ...
    counts: tuple[int, ...]  # per CPU, as many as the row held
    chip: str | None
    hwirq: str | None
    flow: str | None  # trigger/flow handler: "edge", "fasteoi", ...
    handlers: tuple[str, ...]
    truncated: bool  # fewer count columns than CPUs, or the text ended early

    @property
    def number(self) -> int | None:
        return int(self.irq) if _is_count(self.irq) else None

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def vfio(self) -> tuple[VfioHandler, ...]:
        return tuple(v for v in map(parse_vfio_handler, self.handlers) if v)

    @property
    def remapped(self) -> bool:
        # Interrupt-remapping irq domains prefix their chips with "IR-"
        # (arch/x86/kernel/apic/msi.c, drivers/iommu/intel/irq_remapping.c).
        return bool(self.chip and self.chip.startswith("IR-"))


class SkippedRow(NamedTuple):
    """A row of /proc/interrupts that could not be read whole: one the parser
    does not understand, or one whose counts cannot be placed in the CPU
    columns (not in `Interrupts.lines`), or one cut short (kept in `lines`,
    marked truncated). advise's coverage note and the daemon's skipped-rows
    finding count the same rows. str() is the one line of explanation reports print."""

    line: int | None  # 1-based line of the text; None where the reader does not count lines
    irq: str | None  # its label ("28", "NMI"), where one could be read
    reason: str
    text: str  # the row as read: whose it is, where its text says
    cut: bool  # the text ends early, so its actions (handler names) may be missing

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        if self.irq is None:
            return f"{where}{self.reason}: {self.text[:60]!r}"
        return f"{where}IRQ {self.irq}: {self.reason}"

    def names(self, bdf: str) -> bool:
        """Does the row's text name the device (its vfio handler, or a host
        driver's action or MSI chip carrying the BDF, Linux 6.2+)?"""
        return bdf.lower() in self.text.lower()

    @property
    def anonymous(self) -> bool:
        """Cut before any vfio handler it held could be read: any device's.
        Only a numbered row (or one whose label was lost) can be: the
        architecture's rows (NMI, LOC, ERR, MIS, ...) never hold a device's
        handler, and show_interrupts prints them after every numbered row
        (kernel/irq/proc.c, arch_show_interrupts last), so a text cut in one
        of them read every device's row whole."""
        return (self.cut and "vfio-" not in self.text
                and (self.irq is None or self.irq.isdigit()))


class Interrupts(NamedTuple):
    cpus: int | None  # from the header; None for a headerless fragment
    lines: tuple[IrqLine, ...]
    skipped: tuple[SkippedRow, ...]  # every row not read whole

    def by_irq(self) -> dict[str, IrqLine]:
        return {line.irq: line for line in self.lines}

    def vfio_lines(self, bdf: str) -> tuple[tuple[IrqLine, VfioHandler], ...]:
        """The rows with a vfio handler of `bdf`, in table order. Every
        assigned device of every domain asks (advise's cross-domain check
        gathers each other domain's devices too): the table is indexed once,
        in one pass, instead of matching every row's handlers per question,
        which made `advise` over 8 domains on a 256-CPU host with 3,500 rows
        take 5 s of CPU and grow with domains squared (bench/scale_bench.py)."""
        global _vfio_index
        table, index = _vfio_index
        if table is not self:
            building: dict[str, list] = {}
            for line in self.lines:
                for v in line.vfio:
                    building.setdefault(v.bdf.lower(), []).append((line, v))
            index = {k: tuple(pairs) for k, pairs in building.items()}
            # The table is held with its index, so `is` cannot match a new
            # table that took a freed one's address.
            _vfio_index = (self, index)
        return index.get(bdf.lower(), ())


# The last Interrupts table vfio_lines indexed, and its index (bdf -> rows).
_vfio_index: tuple[Interrupts | None, dict] = (None, {})


def _is_count(token: str) -> bool:
    # ASCII digits only ("²".isdigit() is True but int() refuses it), and no
    # more than 20 (a u64); int() also refuses strings over 4300 digits.
    return token.isascii() and token.isdigit() and len(token) <= 20


def parse_vfio_handler(name: str) -> VfioHandler | None:
    m = _VFIO.match(name)
    if not m:
        return None
    index = m.group("index")
    return VfioHandler(m.group("mode"), int(index) if index is not None else None,
                       m.group("bdf").lower())


def _split_handlers(text: str) -> tuple[str, ...]:
    # Actions are joined with ", " (kernel/irq/proc.c). A name could contain
    # ", " in theory; no driver we know does.
    return tuple(h.strip() for h in text.split(", ") if h.strip())


def header_cpus(header: str | bytes) -> int:
    """CPU columns named by the header row ("CPU0 CPU1 ..."; kernel/irq/proc.c
    prints one per online CPU, so the numbers may have gaps)."""
    cpu = b"CPU" if isinstance(header, bytes) else "CPU"
    return sum(1 for tok in header.split() if tok.startswith(cpu))


def parse_interrupts(text: str) -> Interrupts:
    """Parse the text of /proc/interrupts. Never raises on odd rows."""
    cpus: int | None = None
    lines: list[IrqLine] = []
    skipped: list[SkippedRow] = []
    rows = text.splitlines()
    # show_interrupts ends every row with a newline (kernel/irq/proc.c): text
    # that does not was cut inside its last row (a read limit, a copy).
    cut_at_end = bool(text) and not text.endswith(("\n", "\r"))
    for number, raw in enumerate(rows, 1):
        row = raw.strip()
        if not row:
            continue
        if cpus is None and not lines and not skipped and row.startswith("CPU"):
            cpus = header_cpus(row)
            continue
        parsed, fault = read_interrupt_row(row, cpus, cut=cut_at_end and number == len(rows))
        if parsed is not None:
            lines.append(parsed)
        if fault is not None:
            skipped.append(fault._replace(line=number))
    return Interrupts(cpus=cpus, lines=tuple(lines), skipped=tuple(skipped))


def parse_interrupt_row(row: str, cpus: int | None) -> IrqLine | None:
    """One row, without its newline. None if it is not an interrupt row, or
    its counts do not fit the header's CPU columns."""
    return read_interrupt_row(row, cpus)[0]


def read_interrupt_row(row: str, cpus: int | None,
                       cut: bool = False) -> tuple[IrqLine | None, SkippedRow | None]:
    """(the row, why it was not read whole). A cut-short row is returned with
    its fault (its counts and chip may still help); a row whose counts cannot
    be placed in the CPU columns only as a fault. `cut`: the text is known to
    end inside this row."""
    label, sep, _ = row.partition(":")
    label = label.strip()
    irq = label if sep and label and " " not in label else None
    line = _parse_row(row, cpus)
    if line is None:
        return None, SkippedRow(None, irq, "not an interrupt row", row, cut)
    misfit = _count_misfit(row, cpus, line)
    if misfit is not None:
        return None, SkippedRow(None, line.irq, misfit, row, cut)
    if cut and not line.truncated:
        line = line._replace(truncated=True)
    if line.truncated:
        return line, SkippedRow(None, line.irq, "row cut short", row, True)
    return line, None


def _count_misfit(row: str, cpus: int | None, line: IrqLine) -> str | None:
    """Why the row's counts do not fill the header's CPU columns although its
    text goes on past them; None if they do (or no header says how many).
    show_interrupts prints one "%10u " per online CPU in the header and in
    every row (kernel/irq/proc.c), so a count that is not a number, or one
    column too many, leaves the row's CPUs, chip and actions in doubt."""
    if cpus is None or line.irq in SINGLE_COUNT:
        return None
    taken = len(line.counts)
    if taken == cpus:
        # What follows the counts starts the chip of a numbered row, the
        # description of an arch row. A chip name is never a bare number
        # (show_interrupts prints chip->name, "-" or "None" there).
        # Read from the parsed row: no second split of every row.
        after = line.chip if line.number is not None else (line.handlers or ("",))[0]
        if after and _is_count(after.split(None, 1)[0]):
            return f"more count columns than the header's {cpus} CPUs"
        return None
    tokens = row.partition(":")[2].split()
    if taken >= len(tokens):
        return None  # cut inside the counts: line.truncated says so
    bad, after = tokens[taken], tokens[taken + 1:cpus]
    # A chip name starts with a letter ("IR-IO-APIC", "GICv2", "-", "None");
    # a token led by a digit, or one followed by further counts up to the
    # last CPU column, stands where a count belongs.
    if bad[:1].isdigit() or (after and all(map(_is_count, after))):
        return f"count column {taken + 1} is {bad[:20]!r}, not a number"
    return None


def _parse_row(row: str, cpus: int | None) -> IrqLine | None:
    irq, sep, rest = row.partition(":")
    irq = irq.strip()
    if not sep or not irq or " " in irq:
        return None
    tokens = rest.split()
    counts: list[int] = []
    limit = cpus if cpus is not None else len(tokens)
    i = 0
    while i < len(tokens) and len(counts) < limit and _is_count(tokens[i]):
        counts.append(int(tokens[i]))
        i += 1
    # The description starts at the first token we did not take as a count;
    # split(None, i) keeps its original spacing.
    parts = rest.split(None, i)
    desc = parts[i].strip() if len(parts) > i else ""
    truncated = cpus is not None and len(counts) < cpus and irq not in SINGLE_COUNT
    chip = hwirq = flow = None
    handlers: tuple[str, ...] = ()
    if _is_count(irq):
        m = (_CHIP_HWIRQ_FLOW.match(desc) or _CHIP_FLOW.match(desc)
             or _CHIP_HWIRQ_LEVEL.match(desc) or _CHIP_HWIRQ.match(desc))
        if m:
            chip = m.group("chip")
            hwirq = m.groupdict().get("hwirq")
            flow = m.groupdict().get("flow")
            flow = flow.lower() if flow in ("Level", "Edge") else flow
            handlers = _split_handlers(desc[m.end():])
            if flow is not None and flow not in KNOWN_FLOWS and not handlers:
                flow, truncated = None, True  # "IR-IO-APIC    8-e": cut off mid-word
        elif desc:
            # Cut-off row ("IR-IO-APIC    8-e") or an unknown layout: keep the chip.
            chip = desc.split()[0]
            truncated = True
        else:
            truncated = True  # a numbered row always names its chip; this one was cut
    elif desc:
        handlers = (desc,)  # "Non-maskable interrupts": a description, not an action
    return IrqLine(irq=irq, counts=tuple(counts), chip=chip, hwirq=hwirq, flow=flow,
                   handlers=handlers, truncated=truncated)


def sample_table(data: bytes | str, wanted: frozenset[str]) -> tuple[Interrupts, int]:
    """The rows of /proc/interrupts whose IRQ is in `wanted` or that carry a
    vfio handler, as a partial `Interrupts` table (so `model.device_interrupts`
    reads it exactly as it reads the full one). Returns (table, number of those
    rows it could not read, or read cut short).

    The daemon calls this every few seconds on files of thousands of rows and
    hundreds of CPU columns, so it never splits the rows it does not need: it
    finds the vfio rows with bytes.find("vfio-") and the wanted rows by their
    "NN:" label, and parses only those. The CPU count comes from the header
    exactly as `parse_interrupts` takes it (one column per "CPUn" word).
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    header = data[:data.find(b"\n")] if b"\n" in data else data
    cpus = header_cpus(header) if header.strip().startswith(b"CPU") else None
    starts: set[int] = set()
    pos = data.find(b"vfio-")
    while pos != -1:
        starts.add(data.rfind(b"\n", 0, pos) + 1)
        end = data.find(b"\n", pos)
        pos = -1 if end == -1 else data.find(b"vfio-", end)
    # A wanted IRQ is most often a vfio row found above: look only for the
    # others (an INTx line's row, whose handlers may all be other drivers').
    # They are found in one pass over the rows' labels: show_interrupts
    # prints "%*d: " (or the arch row's name and ":") first in each row, so
    # a row's first colon ends its label. Looking for each wanted label with
    # its own find from the start of the text cost wanted rows x file size:
    # 0.5 s at every rediscovery for 1,536 such rows in a 10 MB, 256-CPU
    # file (bench/scale_bench.py), where this pass takes a few ms.
    found = {data[start:data.find(b":", start)].strip().decode("ascii", "replace") for start in starts}
    missing = {irq.encode() for irq in wanted if irq not in found}
    if missing:
        start, size = 0, len(data)
        while start < size:
            end = data.find(b"\n", start)
            if end == -1:
                end = size
            colon = data.find(b":", start, end)
            if colon != -1 and data[start:colon].strip(b" ") in missing:
                starts.add(start)
            start = end + 1
    lines: dict[str, IrqLine] = {}
    skipped: list[SkippedRow] = []
    cut_at_end = not data.endswith((b"\n", b"\r"))
    for start in sorted(starts):
        if start == 0 and cpus is not None:
            continue  # the header itself (a BDF cannot be in it, but be safe)
        end = data.find(b"\n", start)
        text = data[start:None if end == -1 else end].decode("utf-8", "replace").strip()
        # The same reading of a row as parse_interrupts', so the daemon and
        # advise count the same rows as skipped.
        row, fault = read_interrupt_row(text, cpus, cut=cut_at_end and end == -1)
        if fault is not None:
            skipped.append(fault)
        if row is not None:
            lines[row.irq] = row
    return Interrupts(cpus=cpus, lines=tuple(lines.values()), skipped=tuple(skipped)), len(skipped)
