"""The daemon's sampler: the watched devices' vfio vectors, read one IRQ at a
time from sysfs, so a sample costs O(assigned vectors), not O(host).

/proc/interrupts formats every IRQ x every online CPU on each read
(kernel/irq/proc.c, show_interrupts); a host with many NIC and NVMe queues
pays for all of them. The kernel also exposes each IRQ on its own:

- /sys/kernel/irq/<N>/per_cpu_count: "c0,c1,...", one count per *possible*
  CPU, and /sys/kernel/irq/<N>/actions: the handler names joined by ","
  (kernel/irq/irqdesc.c, per_cpu_count_show and actions_show, built only
  with CONFIG_SPARSE_IRQ, which x86_64 selects; Documentation/ABI/testing/
  sysfs-kernel-irq: KernelVersion 4.9, Craig Gallek, "counters for all CPU
  ids ... differs from /proc/interrupts which only shows online CPUs").
  chip_name, hwirq and type sit next to them.
- /sys/bus/pci/devices/<bdf>/msi_irqs/: one entry per MSI/MSI-X IRQ while
  the device has them enabled (Documentation/ABI/testing/sysfs-bus-pci,
  Neil Horman, September 2011; made by msi_sysfs_populate_desc in
  drivers/pci/msi/msi.c (6.1) when MSI/MSI-X is enabled and removed with
  them). vfio-pci enables MSI/MSI-X when the guest driver does and
  requests "vfio-msi[N](bdf)"/"vfio-msix[N](bdf)" on these IRQs
  (drivers/vfio/pci/vfio_pci_intrs.c).
- /sys/bus/pci/devices/<bdf>/irq: the INTx line vfio-pci requests
  "vfio-intx(bdf)" on (pdev->irq). Kernels before the per-device MSI domains
  (6.1 in the lab) put the first MSI vector there while MSI is on, so it
  changes with the mode too.

So every vfio row a device can have is in {irq} + msi_irqs/. Per sample the
sampler lists msi_irqs/ and reads irq (both tiny), and reads per_cpu_count
and actions of those IRQs only. It reads the whole /proc/interrupts only to
(re)discover a device's rows: when it starts watching the device (a domain
event), when msi_irqs/ or irq changed (the guest switched mode or re-enabled
MSI-X with other vectors; QEMU tells libvirt nothing about that, so
msi_irqs/ is listed at every sample: it is the one cheap signal), and every
CROSS_CHECK_SAMPLES samples as a cross-check. Where the sysfs files of an
IRQ are missing or unreadable (kernels without SPARSE_IRQ or older than
4.9, recorded trees without them) that IRQ's row comes from
/proc/interrupts at every sample, and the sampler says so once.

The rows it returns are an `Interrupts` table, as `sample_table` gives, so
`facts.model.device_interrupts` reads them exactly as it reads the full
table: same modes, vectors, sharers and counts (tests/facts/test_sampler.py
checks this on every lab capture and on hypothesis-made hosts).

One difference the kernel makes, not this code: per_cpu_count lists
possible CPUs and /proc/interrupts online ones, so counts an offline CPU
took before it went offline are in the sysfs sum only. The counts come from
sysfs at every sample once a device is watched, so its deltas never mix the
two sources.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, NamedTuple

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import INTERRUPTS_LIMIT, HostRoot
from vfio_advisor.facts.interrupts import Interrupts, IrqLine, sample_table
from vfio_advisor.facts.pci import PciDevice

# A full /proc/interrupts read every 720 samples: an hour at the default
# 5 s interval. It is the safety net for a vfio row outside {irq} +
# msi_irqs/, which sysfs change detection cannot see and which no kernel we
# know makes; at 1/720 of the samples it costs under 1% of the old per-sample
# full read on any host.
CROSS_CHECK_SAMPLES = 720
# sysfs show() fills one page (fs/sysfs/file.c, PAGE_SIZE on x86 = 4096):
# per_cpu_count of a host with many possible CPUs and large counts is cut
# there without its final newline (irqdesc.c scnprintf into a PAGE_SIZE
# buffer), so such a file is not trusted and that IRQ is read from
# /proc/interrupts instead.
SYSFS_PAGE = 4096


class _Watched:
    __slots__ = ("device", "static_irq", "listing", "live_irq", "irqs")

    def __init__(self, device: PciDevice | None):
        self.device = device
        # The irq the facts were gathered with: device_interrupts looks its
        # row up as the INTx candidate, so it is always watched.
        self.static_irq = str(device.irq) if device is not None and device.irq else None
        self.listing: tuple[str, ...] | None = None
        self.live_irq: str | None = None
        self.irqs: frozenset[str] = frozenset()


class _Template(NamedTuple):
    chip: str | None
    hwirq: str | None
    flow: str | None


class Sampler:
    """Reads the rows of the watched devices' IRQs; see the module docstring."""

    def __init__(self, host: HostRoot, note: Callable[[str], None] | None = None):
        self.host = host
        self.note = note or (lambda _msg: None)
        self.watched: dict[str, _Watched] = {}
        self.templates: dict[str, _Template] = {}
        self.from_proc: set[str] = set()  # IRQs whose sysfs files are missing
        # IRQs in neither sysfs nor /proc/interrupts (no descriptor, or a row
        # show_interrupts skips): not looked for again until a rediscovery.
        self.absent: set[str] = set()
        self.fallback_errors: dict[str, FactUnavailable] = {}
        # irq -> (per_cpu_count bytes, actions bytes, template, row) of the last read
        self.last_raw: dict[str, tuple] = {}
        self.samples = 0
        self.full_reads = 0  # /proc/interrupts reads, for any reason
        self.rediscoveries = 0
        self.discover = True
        self.said_fallback = False
        self.said_proc_unreadable = False

    # --- what to watch ----------------------------------------------------

    def watch(self, devices: Iterable[tuple[str, PciDevice | None]]) -> None:
        """Watch exactly these (bdf, device facts); new ones are discovered
        at the next sample (a domain event)."""
        new: dict[str, _Watched] = {}
        for bdf, device in devices:
            old = self.watched.get(bdf)
            if old is not None and old.device is device:
                new[bdf] = old
            else:
                new[bdf] = _Watched(device)
                self.discover = True
        self.watched = new

    def set_host(self, host: HostRoot) -> None:
        """Another host tree (a replay steps through captures): everything
        read before is void."""
        self.host = host
        self.templates.clear()
        self.from_proc.clear()
        self.absent.clear()
        self.last_raw.clear()
        self.discover = True

    # --- reading ----------------------------------------------------------

    def _read(self, rel: str) -> bytes:
        # os.open/os.read: half the cost of a buffered open() for these
        # one-line files, and a sample reads a few dozen of them.
        path = self.host._path(rel)  # noqa: SLF001 - HostRoot's one path rule (and its recording)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.read(fd, SYSFS_PAGE)
            finally:
                os.close(fd)
        except OSError as exc:
            raise FactUnavailable(rel, os.strerror(exc.errno) if exc.errno else str(exc)) from None

    def _listing(self, bdf: str) -> tuple[str, ...] | None:
        try:
            return tuple(sorted(os.listdir(self.host._path(f"sys/bus/pci/devices/{bdf}/msi_irqs"))))  # noqa: SLF001
        except OSError:
            return None  # MSI off (the directory goes with it), or no such device

    def _live_irq(self, bdf: str) -> str | None:
        try:
            value = self._read(f"sys/bus/pci/devices/{bdf}/irq").strip().decode("ascii", "replace")
        except FactUnavailable:
            return None
        return value if value.isdigit() and value != "0" else None

    def _sysfs_row(self, irq: str) -> IrqLine | None:
        """The IRQ's row from sysfs; None if a row /proc/interrupts would not
        print (no action and no count: show_interrupts skips those).
        FactUnavailable if its files cannot be read or are cut."""
        base = f"sys/kernel/irq/{irq}"
        raw = self._read(f"{base}/per_cpu_count")
        if not raw.endswith(b"\n"):
            raise FactUnavailable(f"{base}/per_cpu_count", "cut at the sysfs page size")
        actions = self._read(f"{base}/actions")
        t = self.templates.get(irq)
        if t is None:
            t = self.templates[irq] = self._sysfs_template(base)
        last = self.last_raw.get(irq)
        if last is not None and last[0] == raw and last[1] == actions and last[2] is t:
            return last[3]  # an idle vector: nothing to parse
        counts = tuple(map(int, raw.split(b","))) if raw.strip() else ()
        # actions_show joins with "," (irqdesc.c); /proc/interrupts with ", ".
        handlers = tuple(a.decode("utf-8", "replace") for a in actions.strip().split(b",") if a)
        row = None
        if handlers or any(counts):
            row = IrqLine(irq=irq, counts=counts, chip=t.chip, hwirq=t.hwirq, flow=t.flow,
                          handlers=handlers, truncated=False)
        self.last_raw[irq] = (raw, actions, t, row)
        return row

    def _sysfs_template(self, base: str) -> _Template:
        out = []
        for name in ("chip_name", "hwirq", "type"):
            try:
                out.append(self._read(f"{base}/{name}").strip().decode("utf-8", "replace") or None)
            except FactUnavailable:
                out.append(None)
        return _Template(*out)

    def _read_proc(self) -> bytes | None:
        try:
            data = self.host.read_bytes("proc/interrupts", INTERRUPTS_LIMIT)
        except FactUnavailable as exc:
            if not self.said_proc_unreadable:
                self.said_proc_unreadable = True
                self.note(f"cannot read /proc/interrupts ({exc.reason}); sampling only what "
                          "/sys/kernel/irq shows (said once)")
            return None
        self.full_reads += 1
        return data

    # --- one sample -------------------------------------------------------

    def sample(self) -> tuple[Interrupts | None, int]:
        """The watched devices' rows (an Interrupts table for
        model.device_interrupts) and how many rows could not be read. The
        table is None when neither /proc/interrupts nor any sysfs IRQ file
        could be read."""
        self.samples += 1
        full = self.discover or self.samples % CROSS_CHECK_SAMPLES == 0
        for bdf, w in self.watched.items():
            listing, live = self._listing(bdf), self._live_irq(bdf)
            if listing != w.listing or live != w.live_irq:
                w.listing, w.live_irq = listing, live
                full = True
        proc: Interrupts | None = None
        odd = 0
        cpus = None
        if full:
            proc, odd = self._rediscover()
            cpus = proc.cpus if proc is not None else None
        rows: dict[str, IrqLine] = {}
        missing: set[str] = set()
        readable = False
        for irq in sorted({i for w in self.watched.values() for i in w.irqs}, key=_irq_key):
            if irq in self.absent:
                continue
            if irq in self.from_proc:
                missing.add(irq)
                continue
            try:
                row = self._sysfs_row(irq)
            except FactUnavailable as exc:
                self.from_proc.add(irq)
                self.fallback_errors[irq] = exc
                missing.add(irq)
                continue
            except ValueError:  # a count that is not a number: a damaged recording
                odd += 1
                continue
            readable = True
            if row is not None:
                rows[irq] = row
        if missing:
            if proc is None:
                # /proc/interrupts is read for these anyway: take from it, as
                # a rediscovery does, every vfio row of the watched devices,
                # so a mode switch on a host without the sysfs files is seen
                # at this sample, not at the next cross-check.
                proc, skipped = self._rediscover(counted=False)
                odd += skipped
                cpus = proc.cpus if proc is not None else None
            if proc is not None:
                readable = True
                by_irq = proc.by_irq()
                watched = {i for w in self.watched.values() for i in w.irqs}
                for irq in sorted(watched - set(rows) - self.absent, key=_irq_key):
                    if irq in by_irq:
                        rows[irq] = by_irq[irq]
                        if irq in missing:
                            self._say_fallback(irq, self.fallback_errors.get(irq))
                    elif irq in missing:
                        # No row in /proc/interrupts either: nothing to read
                        # there at every sample (an IRQ without a descriptor,
                        # or one a recorded tree left out).
                        self.absent.add(irq)
                        self.from_proc.discard(irq)
        elif proc is not None:
            readable = True
        if not readable and not rows:
            return (None, odd) if self.watched else (Interrupts(cpus, (), ()), odd)
        return Interrupts(cpus=cpus, lines=tuple(rows[i] for i in sorted(rows, key=_irq_key)),
                          skipped=()), odd

    def _rediscover(self, counted: bool = True) -> tuple[Interrupts | None, int]:
        """Read the whole /proc/interrupts once: each device's vfio rows
        (found by handler name, as the /proc/interrupts model does), with its
        irq and msi_irqs/, become its watched IRQs. `counted`: False when the
        read is the per-sample fallback, not a rediscovery."""
        self.discover = False
        if counted:
            self.rediscoveries += 1
            self.absent.clear()
        for bdf, w in self.watched.items():
            if w.listing is None and w.live_irq is None:
                w.listing, w.live_irq = self._listing(bdf), self._live_irq(bdf)
        candidates = {i for w in self.watched.values()
                      for i in (w.static_irq, w.live_irq, *(w.listing or ())) if i}
        data = self._read_proc()
        table, odd = (sample_table(data, frozenset(candidates)) if data is not None else (None, 0))
        for bdf, w in self.watched.items():
            irqs = {i for i in (w.static_irq, w.live_irq, *(w.listing or ())) if i}
            if table is not None:
                irqs |= {line.irq for line, _ in table.vfio_lines(bdf)}
            w.irqs = frozenset(irqs)
        if table is not None:
            # The chip, hwirq and flow exactly as /proc/interrupts prints them.
            for line in table.lines:
                self.templates[line.irq] = _Template(line.chip, line.hwirq, line.flow)
        return table, odd

    def _say_fallback(self, irq: str, exc: FactUnavailable | None) -> None:
        if self.said_fallback:
            return
        self.said_fallback = True
        why = f"{exc.path}: {exc.reason}" if exc is not None else "unreadable"
        self.note(f"/sys/kernel/irq/{irq} not usable ({why}); reading such IRQs "
                  "from /proc/interrupts at every sample instead (needs Linux 4.9+ with "
                  "CONFIG_SPARSE_IRQ for the per-IRQ files; said once)")


def _irq_key(irq: str) -> tuple[int, str]:
    return (int(irq), irq) if irq.isdigit() else (1 << 62, irq)
