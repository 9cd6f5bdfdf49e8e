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
sampler re-reads per_cpu_count and actions of those IRQs only, through file
descriptors it keeps open: a pread at offset 0 makes kernfs regenerate the
attribute (fs/seq_file.c seq_read_iter, Linux 6.1: "if request is to read
from zero offset, reset iterator to first record"; sysfs show() attributes
are seq_files, fs/kernfs/file.c), and once the IRQ is freed
(kernel/irq/irqdesc.c free_desc -> irq_sysfs_del) the kept descriptor reads
ENODEV (fs/kernfs/file.c kernfs_seq_start: kernfs_get_active fails on a
removed node): the device's vector set changed, so it is rediscovered.
Which cheap signal shows a change of a device's vector set, per mode:
- INTx (a vfio-intx(bdf) action on a watched line): vfio-pci enables MSI or
  MSI-X only with no IRQ type set (drivers/vfio/pci/vfio_pci_intrs.c,
  vfio_pci_set_msi_trigger: -EINVAL unless is_irq_none), so leaving INTx
  frees vfio-intx from the line's actions first (QEMU hw/vfio/pci.c
  vfio_msi_enable/vfio_msix_enable call vfio_disable_interrupts), and the
  line's actions are read at every sample anyway (its sharers);
- MSI: vfio_msi_disable frees every vector (pci_free_irq_vectors): ENODEV
  on the kept descriptors; MSI vectors are allocated all at once
  (pci_alloc_irq_vectors), they cannot grow while enabled;
- MSI-X on a kernel before 6.5: as MSI. vfio-pci there cannot add a
  vector to enabled MSI-X (vfio_pci_set_msi_trigger -> vfio_msi_set_block
  refuses a block past the vectors it enabled, Linux 6.1, and reports
  VFIO_IRQ_INFO_NORESIZE), so QEMU grows it by disabling and enabling
  MSI-X again (hw/vfio/pci.c vfio_msix_vector_do_use, QEMU 7.2), which
  frees every vector: ENODEV.
- MSI-X on 6.5 and later (or a tree that does not say its kernel), or no
  vectors at all: msi_irqs/ is listed at every sample, since MSI-X can grow
  without a teardown (vfio-pci dynamic MSI-X, Linux 6.5,
  pci_msix_alloc_irq_at; QEMU 8.1 vfio_msix_vector_do_use without
  NORESIZE) and a device without an INTx pin (an SR-IOV VF) goes from
  nothing to MSI with no line to watch. It reads the whole /proc/interrupts only to
(re)discover a device's rows: when it starts watching the device (a domain
event), when one of the signals above shows a change (QEMU tells libvirt
nothing about a guest's mode switch), and every CROSS_CHECK_SAMPLES samples
as a cross-check. A recorded tree (--host-root, a replay) has regular files,
which never read ENODEV: where its root is swapped (a replay's symlink), the
kept descriptors are dropped and every device's msi_irqs/ and irq compared,
as at a mode switch. Where the sysfs files of an
IRQ are missing or unreadable (kernels without SPARSE_IRQ or older than
4.9, recorded trees without them) that IRQ's row comes from
/proc/interrupts at every sample, and the sampler says so once.

The rows it returns are an `Interrupts` table, as `sample_table` gives, so
`facts.model.device_interrupts` reads them exactly as it reads the full
table: same modes, vectors, sharers and counts (tests/facts/test_sampler.py
checks this on every lab capture and on hypothesis-made hosts). Between
samples it keeps each IRQ's last read (_Last) and rebuilds only what moved;
tests/daemon/test_sample_fastpath.py checks a long-lived sampler against a
fresh one, which keeps nothing, at every sample.

A steady sample (the plan: nothing but counts moved since the last one)
reads the counts of its vfio MSI/MSI-X vectors from /proc/stat (STAT_INTR:
one read for every vector, where per_cpu_count formats one count per
possible CPU per vector: 1,536 reads of 256 counts on a host with 512 VFs),
and one kept actions descriptor per device, its sentinel, notices what the
per-vector reads noticed: a teardown frees every vector of the device, so
the sentinel reads ENODEV, or another handler where the number went to
another device. On sysfs the sentinels are not read but polled, all in one
poll(2) with no timeout: a kept descriptor on a removed kernfs node polls
POLLERR|POLLPRI (fs/kernfs/file.c kernfs_fop_poll, when kernfs_get_active
fails), a live one read once polls nothing (kernfs_generic_poll: only a
sysfs_notify, which actions never gets, sets them again), so only a
descriptor that polls is read, to tell ENODEV from another text. One
actions read formats the handlers (irqdesc.c actions_show), 3.6-6.2 us
under TCG, where a poll costs 0.22-0.41 us a descriptor, on a 6.1 kernel
that also showed a torn-down device's descriptors polling POLLERR|POLLPRI
(bench/kernel_read_cost). What a poll cannot see is a sentinel's handler
freed while its vector stays allocated (vfio_msi_set_vector_signal with no
eventfd): the same case _sysfs_row does not read the other vectors' actions
for, since QEMU never asks for it on an enabled vector (hw/vfio/pci.c
vfio_msix_vector_release switches to its own eventfd, 7.2-9.x); a
rediscovery, at the latest the cross-check, sees it. In a recorded tree
(regular files: they poll nothing, ever) each sentinel is read and
compared, as before. INTx lines are read one by one as before (their
sharers come and go). tests/facts/test_sampler_stat.py checks it against
fresh samplers, tests/facts/test_sampler_kernfs.py the poll on a real
kernfs node removed under it, tests/lab/test_lab_live.py that /proc/stat's
totals are the per_cpu_count sums on a real kernel; bench/kernel_read_cost
measures the reads and the poll on a 6.1 kernel with 256 possible CPUs.

One difference the kernel makes, not this code: per_cpu_count lists
possible CPUs and /proc/interrupts online ones, so counts an offline CPU
took before it went offline are in the sysfs sum only. The counts come from
sysfs at every sample once a device is watched, so its deltas never mix the
two sources. /proc/stat's total is the same counter as the per_cpu_count
sum (tot_count, on every possible CPU), up to its wrap at 2**32, which the
stat plan makes up for (STAT_WRAP).
"""

from __future__ import annotations

import errno
import os
import re
import select
from operator import itemgetter, lt
from typing import Callable, Iterable, NamedTuple

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import INTERRUPTS_LIMIT, HostRoot
from vfio_advisor.facts.interrupts import Interrupts, IrqLine, parse_vfio_handler, sample_table
from vfio_advisor.facts.kernel import parse_cpulist, read_kernel_release
from vfio_advisor.facts.pci import PciDevice

# A full /proc/interrupts read every 17,280 samples: a day at the default
# 5 s interval. It is the safety net for a vfio row outside {irq} +
# msi_irqs/, which the per-sample signals (module docstring) cannot see and
# which no kernel we know makes. Measured (make bench, 256 CPUs): one such
# read costs 4.4 ms at 2000 rows and 60 ms at 20,000 rows; hourly (720) that
# was 84 us per sample at 20,000 rows, more than the sample itself, so the
# cost grew with the host again; daily it is 3.5 us.
CROSS_CHECK_SAMPLES = 17280
# sysfs show() fills one page (fs/sysfs/file.c, PAGE_SIZE on x86 = 4096):
# per_cpu_count of a host with many possible CPUs and large counts is cut
# there without its final newline (irqdesc.c scnprintf into a PAGE_SIZE
# buffer), so such a file is not trusted and that IRQ is read from
# /proc/interrupts instead.
SYSFS_PAGE = 4096
# Kept descriptors (two per watched IRQ): beyond this many, files are opened
# for each read instead, so a host with hundreds of vectors stays far below
# systemd's default soft RLIMIT_NOFILE of 1024.
MAX_KEPT_FDS = 512
# /proc/stat's "intr" line: one total per IRQ number, every number up to
# nr_irqs (fs/proc/stat.c show_all_irqs, Linux 6.1: kstat_irqs_usr, which
# for an ordinary IRQ returns desc->tot_count, kept beside the per-CPU counts
# in kstat_incr_irqs_this_cpu since Linux 5.1, "genirq: Avoid summation loops
# for /proc/stat"). A steady sample reads it once for all its vectors (the
# stat plan, Sampler._read_stat_plan) instead of one per_cpu_count each,
# which formats one number per possible CPU per read (irqdesc.c
# per_cpu_count_show): 1,536 reads of 256 numbers on a 256-CPU host.
STAT_INTR = b"\nintr "
# tot_count is an unsigned int: it wraps at 2**32, where the per_cpu_count sum
# (one unsigned int per CPU) need not. The plan keeps the difference.
STAT_WRAP = 1 << 32
# /proc/stat is sized by the kernel to its CPUs and IRQs (single_open_size in
# fs/proc/stat.c stat_open); a read that fills the buffer is retried with a
# larger one.
STAT_FIRST_READ = 1 << 16
# What a kept kernfs descriptor polls when its node was removed, or before its
# first read: kernfs_generic_poll compares the open file's event count, set
# by each read (kernfs_seq_show), with the node's, which starts at 1
# (kernfs_get_open_node), so a fresh descriptor polls these until read once
# (fs/kernfs/file.c; seen on Linux 6.1 by bench/kernel_read_cost and on 6.18
# by tests/facts/test_sampler_kernfs.py). A regular file never polls them
# (its f_op has no poll: DEFAULT_POLLMASK).
POLL_CHANGED = select.POLLERR | select.POLLPRI


def kept_fds_cap() -> int:
    """How many descriptors the sampler may keep: MAX_KEPT_FDS, or half
    the soft RLIMIT_NOFILE when that is higher (the daemon raises its soft
    limit to the hard one at start, as systemd.exec(5) LimitNOFILE= advises
    for programs that need many descriptors and do not use select(2)). Past
    the cap each read opens and closes its file: at 1,536 vectors (3,072
    files) that was a third of the sample's CPU (bench/scale_bench.py)."""
    import resource  # noqa: PLC0415

    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return MAX_KEPT_FDS
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MAX_KEPT_FDS, soft // 2)
# per_cpu_count prints each CPU's count with "%u" (irqdesc.c
# per_cpu_count_show): no sign, no leading zero, so the non-zero counts are
# exactly the tokens starting with 1-9. A vector is affine to one or a few
# CPUs (managed affinity, irqbalance), so most of a many-CPU host's tokens
# are "0", and finding only the others is 5-10x cheaper than int() on all.
_NONZERO = re.compile(rb"[1-9][0-9]*")
_COUNT_CHARS = b"0123456789,"


def parse_per_cpu_count(raw: bytes) -> tuple[int, ...]:
    """The non-zero per-CPU counts of a per_cpu_count text, in CPU order
    (their sum is the IRQ's total; zeros are left out). ValueError if the
    text holds anything but digits and commas before its final newline."""
    return _parse_counts(raw, None)[0]


def _parse_counts(raw: bytes, hint: tuple[bytes, bytes] | None) -> tuple[tuple[int, ...], tuple[bytes, bytes]]:
    """parse_per_cpu_count, and the text's zero runs before its first and
    after its last non-zero count (the hint for the next read).

    A vector counts on the same CPU or few CPUs sample after sample, so its
    next text usually starts and ends with the same runs of "0,": two
    memcmp (startswith/endswith) skip them, and only the counts between are
    parsed. Otherwise the whole text is checked and parsed."""
    if hint is not None and raw.startswith(hint[0]) and raw.endswith(hint[1]):
        mid = raw[len(hint[0]):len(raw) - len(hint[1])]
        if mid.isdigit() and mid[0] != 48:  # one count, on the same CPU as before (not a "0")
            return (int(mid),), hint
        if not mid.translate(None, _COUNT_CHARS):
            return tuple(map(int, _NONZERO.findall(mid))), hint
    if raw[-1:] != b"\n" or raw.translate(None, _COUNT_CHARS) != b"\n":
        raise ValueError(f"not a per_cpu_count: {raw[:40]!r}")
    counts = tuple(map(int, _NONZERO.findall(raw)))
    # lstrip stops at the first 1-9, where the first non-zero count starts;
    # the zero run at the end starts at the comma after the last one.
    lead = raw[:len(raw) - len(raw.lstrip(b"0,"))]
    last = raw.rstrip(b"0,\n")
    comma = raw.find(b",", len(last))
    tail = raw[comma:] if comma >= 0 and counts else raw[-1:]
    # Both are runs of zeros ("0,0,..." and ",0,...\n"), at most two per
    # possible CPU count: one copy of each for all vectors. Kept per vector
    # they were 0.8 MiB of the daemon's RSS at 1,536 vectors on 256 CPUs
    # (bench/scale_bench.py); most vectors share them.
    return counts, (_ZERO_RUNS.setdefault(lead, lead), _ZERO_RUNS.setdefault(tail, tail))


_ZERO_RUNS: dict[bytes, bytes] = {}


class _Template(NamedTuple):
    chip: str | None
    hwirq: str | None
    flow: str | None


class _Watched:
    __slots__ = ("device", "static_irq", "listing", "live_irq", "irqs", "steady", "dirfd", "names")

    def __init__(self, device: PciDevice | None):
        self.device = device
        # The irq the facts were gathered with: device_interrupts looks its
        # row up as the INTx candidate, so it is always watched.
        self.static_irq = str(device.irq) if device is not None and device.irq else None
        self.listing: tuple[str, ...] | None = None
        self.live_irq: str | None = None
        self.irqs: frozenset[str] = frozenset()
        # True while the device holds vfio-intx or vfio-msi vectors read from
        # sysfs: a change of its vector set then shows in what is read anyway
        # (the module docstring), and msi_irqs/ is not listed.
        self.steady = False
        self.dirfd: int | None = None  # msi_irqs/, kept open while listed
        # The names os.listdir gave last through dirfd and their sorted
        # tuple: _listing's result is a function of the names alone, so an
        # identical list (kernfs lists an unchanged directory in the same
        # order) skips the sort. Any other list, even a reordered one, is
        # sorted again.
        self.names: tuple[list[str], tuple[str, ...]] | None = None


class _Last:
    """The last read of one IRQ's sysfs files (Sampler.last_raw).

    Updated in place when only the counts moved, so a steady sample builds
    no bookkeeping tuple per vector; replaced by a new one otherwise."""

    __slots__ = ("raw", "actions", "template", "row", "handlers", "exclusive", "hint", "rest")

    def __init__(self, raw: bytes, actions: bytes, template: _Template, row: IrqLine | None,
                 handlers: tuple[str, ...], exclusive: bool, hint: tuple[bytes, bytes]):
        # per_cpu_count as read; None for an exclusive vector, whose counts
        # are parsed at every read instead (_recount): comparing its text
        # cost as much as parsing it, and keeping one per vector was 0.8 MiB
        # of the daemon's RSS at 1,536 vectors on 256 CPUs
        # (bench/scale_bench.py).
        self.raw = raw
        self.actions = actions  # actions as read
        self.template = template
        self.row = row
        self.handlers = handlers
        # An MSI/MSI-X vector holding its vfio handler: actions not re-read (_sysfs_row).
        self.exclusive = exclusive
        self.hint = hint  # _parse_counts' zero runs
        # The row's fields after its counts: the next row is
        # IrqLine(irq, counts, *rest), built as a plain tuple (_with_counts).
        self.rest = row[2:] if row is not None else None


class _Stale(Exception):
    """A kept sysfs descriptor reads ENODEV: its IRQ was freed."""


class _StatPlan(NamedTuple):
    """What a steady sample reads from /proc/stat (Sampler._build_stat_plan)."""

    read: tuple  # (fd, actions text) of the sentinels read and compared (regular files)
    poller: object  # a select.poll over the keys of `polled`, None without them
    polled: dict  # fd -> actions text of the sentinels polled (kernfs)
    entries: tuple  # (irq, _Last) per vector, in the order of the tokens below
    totals: list  # each entry's total at the last sample
    last_index: int  # the highest index in the intr line an entry reads
    order: tuple  # the entries' IRQs, in their order
    tokens: Callable  # the intr line's tokens of the entries, in their order (an itemgetter)
    offsets: tuple  # (entry's index, its offset) where the offset is not 0
    built: list  # each entry's total when its row (_Last.row) was built last


class Sampled:
    """One sample as the Watcher reads it (Sampler.sample_counts): `totals`,
    each row's count summed over CPUs (IrqLine.total) in the table's order,
    and `table`, the Interrupts table.

    On the steady path (the stat plan, _read_stat_plan) the rows are built
    only when the table is asked for: a device whose rows kept their shape
    needs only their totals (daemon/watch.py), and building 1,536 rows a
    sample to hand over one number each was a third of the sampler's CPU
    at 512 devices (bench/scale_bench.py). A table built later is still
    this sample's: it is built from these totals."""

    __slots__ = ("totals", "_table", "_build")

    def __init__(self, totals: list[int], table: Interrupts | None = None,
                 build: Callable[[], Interrupts] | None = None):
        self.totals = totals
        self._table = table
        self._build = build

    @classmethod
    def of(cls, table: Interrupts) -> "Sampled":
        return cls([sum(line.counts) for line in table.lines], table)

    @property
    def table(self) -> Interrupts:
        if self._table is None:
            self._table = self._build()
            self._build = None
        return self._table


class _Column(NamedTuple):
    """_read_planned's steady result: the stat plan and this sample's totals, rows not built."""

    plan: _StatPlan
    totals: list


def _poll_now(fd: int) -> int:
    """poll(2) of one descriptor for POLLPRI, no timeout: its revents."""
    poller = select.poll()
    poller.register(fd, select.POLLPRI)
    ready = poller.poll(0)
    return ready[0][1] if ready else 0


def _sentinel_holds(fd: int, actions: bytes) -> bool:
    """Does a stat plan's sentinel still read `actions`? _Stale when it
    reads ENODEV (freed, module docstring: every vector of the device) or
    another handler: the vector freed and taken by another device, or its
    vfio handler freed with the vector kept (vfio_msi_set_vector_signal
    with no eventfd); both rediscover. False at any
    other read error (the full loop reads again)."""
    try:
        now = os.pread(fd, SYSFS_PAGE, 0)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise _Stale(fd) from None
        return False
    if now != actions:
        raise _Stale(fd)
    return True


class Sampler:
    """Reads the rows of the watched devices' IRQs; see the module docstring.

    Rows read from sysfs carry the IRQ's non-zero per-CPU counts only
    (parse_per_cpu_count): their sum, IrqLine.total, is what
    facts.model.device_interrupts reads of them."""

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
        # irq -> what its sysfs files read last
        self.last_raw: dict[str, _Last] = {}
        # irq -> kept descriptor of its per_cpu_count / actions
        self.count_fds: dict[str, int] = {}
        self.action_fds: dict[str, int] = {}
        self.order: tuple[str, ...] = ()  # the watched IRQs, sorted
        self.max_kept = kept_fds_cap()
        self.samples = 0
        self.full_reads = 0  # /proc/interrupts reads, for any reason
        self.rediscoveries = 0
        self.discover = True
        self.said_fallback = False
        self.said_proc_unreadable = False
        # Changes whenever a row of the table sample() returns appears,
        # goes, or changes anything but its counts: equal shapes, equal
        # modes, vectors, INTx line and sharers (runtime.Watcher keys on it).
        self.shape = 0
        self._last_rows: tuple | None = None
        self._listed: list = []  # (bdf, _Watched) of the devices not steady
        # (entries, others): the entries, (irq, kept descriptor, _Last), of
        # every IRQ in `order` the last _read_rows read as a vfio MSI/MSI-X
        # vector through its kept descriptor, which the next sample reads in
        # one tight loop (_read_plan); the others (INTx lines, vectors
        # without a vfio handler) read one by one (_sysfs_row), as the full
        # loop does. None whenever that may no longer hold: a rediscovery, a
        # closed descriptor, another tree, or a read the loop did not expect
        # (it then falls back to the full loop).
        self._plan: tuple | None = None
        # The steady sample's counts from /proc/stat (_build_stat_plan);
        # None where the plan reads each per_cpu_count. stat_usable turns False for the
        # tree (until the next rediscovery) when /proc/stat cannot be read
        # or disagrees with per_cpu_count; stat_samples counts the samples
        # it served.
        self._stat_plan: _StatPlan | None = None
        self._stat_fd: int | None = None
        self._stat_size = STAT_FIRST_READ
        self.stat_usable = True
        self.stat_samples = 0
        self.plan_samples = 0  # samples the plan served, from /proc/stat or not
        self._root_id = self._root_identity()
        self.steady_modes = _steady_modes(host)

    @property
    def polled_sentinels(self) -> int:
        """How many of the stat plan's sentinels are polled, not read (kernfs)."""
        return len(self._stat_plan.polled) if self._stat_plan is not None else 0

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
        for bdf, old in self.watched.items():
            if new.get(bdf) is not old:
                _close_dir(old)
        self.watched = new

    def set_host(self, host: HostRoot) -> None:
        """Another host tree (a replay steps through captures): everything
        read before is void."""
        self.host = host
        self.templates.clear()
        self.from_proc.clear()
        self.absent.clear()
        self.last_raw.clear()
        self.close()
        self._root_id = self._root_identity()
        self.steady_modes = _steady_modes(host)
        self.discover = True

    def close(self) -> None:
        """Close every kept descriptor (they are reopened when needed)."""
        self._plan = self._stat_plan = None
        if self._stat_fd is not None:
            os.close(self._stat_fd)
            self._stat_fd = None
        for fds in (self.count_fds, self.action_fds):
            for fd in fds.values():
                os.close(fd)
            fds.clear()
        for w in self.watched.values():
            _close_dir(w)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # --- reading ----------------------------------------------------------

    def affinity(self, vectors) -> tuple[tuple[str, frozenset[int]], ...]:
        """smp_affinity_list of each vector ((irq, count) pairs): the CPUs
        its handler may run on (kernel/irq/proc.c, irq_affinity_list_proc_show).
        A vector freed meanwhile is left out."""
        out = []
        for irq, _count in vectors:
            try:
                out.append((irq, parse_cpulist(self.host.read_value(f"proc/irq/{irq}/smp_affinity_list"))))
            except FactUnavailable:
                continue
        return tuple(out)

    def _read(self, rel: str) -> bytes:
        return self.host.read_once(rel, SYSFS_PAGE)

    def _pread(self, fds: dict[str, int], irq: str, name: str) -> bytes:
        """/sys/kernel/irq/<irq>/<name> through a kept descriptor (module
        docstring); _Stale when the IRQ was freed under it."""
        fd = fds.get(irq)
        if fd is not None:
            try:
                return os.pread(fd, SYSFS_PAGE, 0)
            except OSError as exc:
                os.close(fd)
                del fds[irq]
                if exc.errno == errno.ENODEV:
                    raise _Stale(irq) from None
                # anything else: open it again below, and say why if that fails
        rel = f"sys/kernel/irq/{irq}/{name}"
        if len(self.count_fds) + len(self.action_fds) >= self.max_kept:
            return self._read(rel)
        fd = self.host.open_kept(rel)
        fds[irq] = fd
        try:
            return os.pread(fd, SYSFS_PAGE, 0)
        except OSError as exc:
            raise FactUnavailable(rel, os.strerror(exc.errno) if exc.errno else str(exc)) from None

    def _listing(self, bdf: str, w: _Watched | None = None) -> tuple[str, ...] | None:
        if w is not None and w.dirfd is not None:
            try:
                # os.listdir(fd) rewinds a duplicate of the kept descriptor.
                # kernfs lists a removed directory as empty (fs/kernfs/dir.c
                # kernfs_dir_pos finds no children): MSI-X off reads as a change.
                names = self.host.list_kept(w.dirfd)
            except OSError:
                _close_dir(w)
                return None
            if not names:
                return None
            if w.names is not None and w.names[0] == names:
                return w.names[1]
            w.names = (names, tuple(sorted(names)))
            return w.names[1]
        rel = f"sys/bus/pci/devices/{bdf}/msi_irqs"
        try:
            names = self.host.list_dir(rel)
        except FactUnavailable:
            return None  # MSI off (the directory goes with it), or no such device
        if w is not None and names:
            try:
                w.dirfd = self.host.open_kept(rel, directory=True)
            except FactUnavailable:
                w.dirfd = None
        return tuple(names)

    def _live_irq(self, bdf: str) -> str | None:
        try:
            value = self._read(f"sys/bus/pci/devices/{bdf}/irq").strip().decode("ascii", "replace")
        except FactUnavailable:
            return None
        return value if value.isdigit() and value != "0" else None

    def _root_identity(self):
        # The live host's root is "/", whose sysfs files follow the kernel.
        # A recorded tree's root may be a symlink a replay swaps (fleet tier,
        # daemon tests): kept descriptors would go on reading the old tree.
        return self.host.root_identity()

    def _sysfs_row(self, irq: str) -> tuple[IrqLine | None, bool]:
        """The IRQ's row from sysfs (None if a row /proc/interrupts would
        not print: no action and no count, show_interrupts skips those) and
        whether anything but its counts changed since the last read.
        FactUnavailable if its files cannot be read or are cut; _Stale."""
        fd = self.count_fds.get(irq)
        try:
            raw = os.pread(fd, SYSFS_PAGE, 0) if fd is not None else None  # the usual path, inline
        except OSError:
            raw = None
        if raw is None:
            raw = self._pread(self.count_fds, irq, "per_cpu_count")
        if raw[-1:] != b"\n":
            raise FactUnavailable(f"sys/kernel/irq/{irq}/per_cpu_count", "cut at the sysfs page size")
        last = self.last_raw.get(irq)
        if last is not None and last.exclusive:
            # An MSI/MSI-X vector holding its vfio handler: nothing else can
            # join it (vfio-pci requests it without IRQF_SHARED,
            # vfio_pci_intrs.c vfio_msi_set_vector_signal, Linux 6.1), and
            # QEMU keeps a handler on it until MSI/MSI-X is disabled
            # (hw/vfio/pci.c vfio_msix_vector_release switches it to QEMU's
            # own eventfd, 7.2-9.x), which frees the vector: ENODEV above.
            # So its actions are not read again until the next rediscovery
            # (which empties last_raw, as it does when a template changes);
            # only the counts move. INTx lines (sharers come and go) and
            # vectors without a vfio handler yet (one may be set) have their
            # actions read at every sample, below.
            _recount(irq, last, raw)
            return last.row, False
        actions = self._pread(self.action_fds, irq, "actions")
        t = self.templates.get(irq)
        if t is None:
            t = self.templates[irq] = self._sysfs_template(f"sys/kernel/irq/{irq}")
        if last is not None and last.actions == actions and last.template is t and last.handlers:
            # Same handlers and chip: only the counts can have moved, and a
            # row with handlers is a row whatever its counts (below), so
            # nothing but the counts changed. (Without handlers the row comes
            # and goes with its counts: worked out below.)
            if raw != last.raw:
                _recount(irq, last, raw)
            return last.row, False
        # actions_show joins with "," (irqdesc.c); /proc/interrupts with ", ".
        handlers = tuple(a.decode("utf-8", "replace") for a in actions.strip().split(b",") if a)
        exclusive = any(v is not None and v.mode != "intx" for v in map(parse_vfio_handler, handlers))
        moved = last is None or last.actions != actions or last.template is not t
        counts, hint = _parse_counts(raw, last.hint if last is not None else None)
        row = None
        if handlers or counts:
            row = IrqLine(irq, counts, t.chip, t.hwirq, t.flow, handlers, False)
        if last is not None and (last.row is None) != (row is None):
            moved = True
        # An exclusive vector's text is not kept (_Last.raw).
        self.last_raw[irq] = _Last(None if exclusive else raw, actions, t, row, handlers, exclusive, hint)
        return row, moved

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
        sampled, odd = self.sample_counts()
        return (sampled.table if sampled is not None else None), odd

    def sample_counts(self) -> tuple[Sampled | None, int]:
        """sample() as the Watcher reads it: the rows' totals, and the table
        built only if asked for (Sampled)."""
        self.samples += 1
        full = self.discover or self.samples % CROSS_CHECK_SAMPLES == 0
        recheck = False
        if self._root_id is not None:
            root_id = self._root_identity()
            if root_id != self._root_id:
                self._root_id, recheck = root_id, True
                self.close()
        for bdf, w in (self.watched.items() if recheck or full else self._listed):
            if recheck:
                listing, live = self._listing(bdf, w), self._live_irq(bdf)
            elif w.steady:
                continue
            else:
                listing, live = self._listing(bdf, w), w.live_irq
            if listing != w.listing or live != w.live_irq:
                w.listing, w.live_irq = listing, live
                full = True
        proc: Interrupts | None = None
        odd = 0
        cpus = None
        if full:
            proc, odd = self._rediscover()
            cpus = proc.cpus if proc is not None else None
        try:
            rows, missing, readable, bad, moved = self._read_rows()
        except _Stale:
            # A watched IRQ was freed (module docstring): rediscover, once.
            proc, odd = self._rediscover()
            cpus = proc.cpus if proc is not None else None
            full = True
            rows, missing, readable, bad, moved = self._read_rows(retry=True)
        odd += bad
        if type(rows) is _Column:
            plan, totals = rows
            if not (full or moved) and plan.order == self._last_rows:
                # Only counts moved: no row is built unless the table is asked for.
                return Sampled(totals, build=lambda: Interrupts(
                    cpus, tuple(self._stat_rows(plan, totals).values()), ())), odd
            rows = self._stat_rows(plan, totals)
        if missing:
            if proc is None:
                # /proc/interrupts is read for these anyway: take from it, as
                # a rediscovery does, every vfio row of the watched devices,
                # so a mode switch on a host without the sysfs files is seen
                # at this sample, not at the next cross-check.
                proc, skipped = self._rediscover(counted=False)
                odd += skipped
                cpus = proc.cpus if proc is not None else None
                moved = True
            if proc is not None:
                readable = True
                moved = True
                by_irq = proc.by_irq()
                watched = {i for w in self.watched.values() for i in w.irqs}
                # The absent too: /proc/interrupts is read anyway, and a line
                # leaves it while it has no handler (kernel/irq/proc.c
                # show_interrupts skips a descriptor without actions), as
                # vfio-intx's does in a guest reboot's device reset (QEMU
                # hw/vfio/pci.c vfio_pci_pre_reset frees it, vfio_pci_post_reset
                # requests it again). Only where /proc/interrupts is read for
                # another row: reading it for absent IRQs alone would read it
                # at every sample on hosts whose devices name a line that has
                # no descriptor (lab captures do), so a device whose only
                # watched IRQ is absent waits for the next rediscovery. On a
                # live host a freed line keeps its sysfs files: not absent.
                for irq in sorted(watched - set(rows), key=_irq_key):
                    if irq in by_irq:
                        rows[irq] = by_irq[irq]
                        if irq in self.absent:
                            self.absent.discard(irq)
                            self.from_proc.add(irq)
                        elif irq in missing:
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
            self.shape += 1
            self._last_rows = None
            self._steady({})
            return (None, odd) if self.watched else (Sampled([], Interrupts(cpus, (), ())), odd)
        # _read_rows follows self.order (sorted); rows from /proc/interrupts are added after
        order = tuple(sorted(rows, key=_irq_key)) if missing else tuple(rows)
        if moved or full or order != self._last_rows:
            self.shape += 1
            self._last_rows = order
            self._steady(rows)
        # Without a fallback row, rows is in `order` already (_read_rows).
        lines = tuple(rows[i] for i in order) if missing else tuple(rows.values())
        return Sampled.of(Interrupts(cpus, lines, ())), odd

    def _read_plan(self, plan: tuple) -> dict | None:
        """_read_rows' steady case for the plan's entries, vfio MSI/MSI-X
        vectors, each read through its kept descriptor as in the last
        sample, where /proc/stat cannot serve (_read_stat_plan). Their rows,
        or None at the first read that is anything else (an error, ENODEV,
        a damaged text): the full loop then reads them all again, which
        changes nothing for those read here (_recount only takes counts)."""
        rows: dict[str, IrqLine] = {}
        pread = os.pread
        for irq, fd, last in plan:
            try:
                raw = pread(fd, SYSFS_PAGE, 0)
            except OSError:
                return None
            lead, tail = last.hint
            if (raw.startswith(lead) and raw.endswith(tail)
                    and (mid := raw[len(lead):len(raw) - len(tail)]).isdigit() and mid[0] != 48):
                # _recount's first case, inline: the vector counts on the
                # CPU it counted on before. The tail ends with the text's
                # newline (_parse_counts), so a text cut at the page size
                # never matches; a count of exactly "0" is no count
                # (_NONZERO) and goes to _recount.
                if last.row[1] != (counts := (int(mid),)):
                    last.row = _tuple_new(IrqLine, (irq, counts, *last.rest))
            elif raw[-1:] != b"\n":
                return None
            else:
                try:
                    _recount(irq, last, raw)
                except ValueError:
                    return None
            rows[irq] = last.row
        return rows

    def _stat_tokens(self, upto: int = -1) -> list[bytes] | None:
        """/proc/stat's intr line split at its spaces: [sum, IRQ 0, IRQ 1,
        ...] (show_all_irqs prints every number up to nr_irqs, a gap as
        " 0"); with `upto`, only the tokens up to that index are split off
        (the rest of the line stays in one), read through a kept
        descriptor (a proc seq_file read at offset 0 shows it anew,
        fs/seq_file.c seq_read_iter). None if /proc/stat cannot be read or
        has no intr line."""
        fd = self._stat_fd
        try:
            if fd is None:
                fd = self._stat_fd = self.host.open_kept("proc/stat")
            data = os.pread(fd, self._stat_size, 0)
            while len(data) >= self._stat_size:  # maybe cut: read it whole
                self._stat_size *= 4
                data = os.pread(fd, self._stat_size, 0)
        except (FactUnavailable, OSError):
            return None
        start = data.find(STAT_INTR)
        if start < 0:
            return None
        start += len(STAT_INTR)
        end = data.find(b"\n", start)
        return data[start:end if end >= 0 else len(data)].split(b" ", upto + 1 if upto >= 0 else -1)

    def _build_stat_plan(self, plan: tuple) -> _StatPlan | None:
        """The plan's counts from /proc/stat (STAT_INTR), or None, and
        stat_usable False, where /proc/stat cannot stand in for the
        per_cpu_count just read.

        Each device's vectors are freed together (MSI, and MSI-X before
        Linux 6.5: the module docstring; on later kernels msi_irqs/ is
        listed at every sample anyway), so one kept actions descriptor per
        device, its sentinel, reads ENODEV or another text at any teardown
        of the device's vectors, as the per-vector reads did. Per entry
        (irq, index in the intr line, offset, _Last): the offset is the
        multiple of STAT_WRAP between tot_count and the per_cpu_count sum
        just read (zero until a vector has counted 2**32 interrupts). The
        intr line is read after the per_cpu_count texts, so on a live host
        it may be ahead of them, never behind."""
        tokens = self._stat_tokens()
        if tokens is None:
            self.stat_usable = False
            return None
        sentinels, entries, totals, seen = [], [], [], set()
        try:
            for irq, _fd, last in plan:
                counted = sum(last.row[1])
                k = int(irq) + 1
                now = int(tokens[k])
                ahead = (now - counted) % STAT_WRAP
                if ahead >= STAT_WRAP // 2:  # behind per_cpu_count: not the same counter
                    raise ValueError(irq)
                entries.append((irq, k, counted + ahead - now, last))
                totals.append(counted)
                # An exclusive vector holds a vfio handler (_sysfs_row): its device.
                device = next(v.bdf for v in map(parse_vfio_handler, last.handlers) if v is not None)
                if device not in seen:
                    seen.add(device)
                    sentinels.append((irq, last.actions))
            read, poller, polled = self._keep_sentinels(sentinels)
        except (ValueError, IndexError, KeyError, FactUnavailable, _Stale):
            # A recorded tree whose /proc/stat is from another moment, a
            # damaged one, or an actions file that cannot be kept open (past
            # max_kept): the plan reads each per_cpu_count instead.
            self.stat_usable = False
            return None
        indexes = [e[1] for e in entries]
        # itemgetter of one index gives the item, not a tuple of one.
        tokens_of = itemgetter(*indexes) if len(indexes) > 1 else (lambda t, k=indexes[0]: (t[k],))
        return _StatPlan(read, poller, polled, tuple((e[0], e[3]) for e in entries), totals, max(indexes),
                         tuple(e[0] for e in entries), tokens_of,
                         tuple((i, e[2]) for i, e in enumerate(entries) if e[2]), list(totals))

    def _keep_sentinels(self, sentinels: list) -> tuple[tuple, object, dict]:
        """Each sentinel, (irq, its actions text), on a descriptor opened
        anew (it replaces the IRQ's kept actions descriptor): (those to read
        and compare at each sample, as (fd, text); a poll object over those
        to poll, or None; {fd: text} of those). A descriptor is polled when it
        behaves as kernfs does (POLL_CHANGED): polled before its first
        read, then nothing once read. ValueError when one cannot be kept or
        reads another text than the plan's."""
        read, polled = [], {}
        fds = self.action_fds
        for irq, actions in sentinels:
            old = fds.pop(irq, None)
            if old is not None:
                os.close(old)
            elif len(self.count_fds) + len(fds) >= self.max_kept:
                raise ValueError(irq)  # past the cap: no kept descriptor, no plan
            fd = fds[irq] = self.host.open_kept(f"sys/kernel/irq/{irq}/actions")
            fresh = _poll_now(fd)
            try:
                now = os.pread(fd, SYSFS_PAGE, 0)
            except OSError:
                raise ValueError(irq) from None
            if now != actions:
                # Changed since the loop read it (a teardown between the two
                # reads): the next sample rediscovers, which tries the plan again.
                self.discover = True
                raise ValueError(irq)
            if fresh & POLL_CHANGED and not _poll_now(fd):
                polled[fd] = actions
            else:
                read.append((fd, actions))
        if not polled:
            return tuple(read), None, polled
        poller = select.poll()
        for fd in polled:
            poller.register(fd, select.POLLPRI)
        return tuple(read), poller, polled

    def _read_stat_plan(self, stat_plan: _StatPlan) -> list[int] | None:
        """_read_plan's counts from one /proc/stat read (_build_stat_plan):
        each entry's total, in the entries' order (_stat_rows builds their
        rows). _Stale when a sentinel reads ENODEV or another text
        (sample() rediscovers). None at anything else it does not expect: a
        sentinel's read error, a damaged or short intr line, a total that
        fell (a reset, or tot_count wrapping past the offset): the full
        loop then reads every per_cpu_count and builds the plan again."""
        read, poller, polled, _entries, totals, last_index = stat_plan[:6]
        if poller is not None:
            # One poll(2) for every kernfs sentinel (module docstring): those
            # that poll are read, as the others are below.
            for fd, _events in poller.poll(0):
                if not _sentinel_holds(fd, polled[fd]):
                    return None
        for fd, actions in read:
            if not _sentinel_holds(fd, actions):
                return None
        tokens = self._stat_tokens(last_index)
        if tokens is None or len(tokens) <= last_index:
            return None
        try:
            column = list(map(int, stat_plan.tokens(tokens)))
        except ValueError:
            return None
        for i, offset in stat_plan.offsets:
            column[i] += offset
        if any(map(lt, column, totals)):
            return None
        totals[:] = column
        self.stat_samples += 1
        return column

    def _stat_rows(self, stat_plan: _StatPlan, column: list[int]) -> dict[str, IrqLine]:
        """The rows of _read_stat_plan's `column`, in the entries' order:
        each entry's row, built again where its total is not the one it was
        built with. One count, the total: the rows' sum is what the model
        reads (IrqLine.total); a row whose total did not move stays as it
        was (a zero total: no count)."""
        built = stat_plan.built
        rows: dict[str, IrqLine] = {}
        for i, (irq, last) in enumerate(stat_plan.entries):
            total = column[i]
            if total != built[i]:
                built[i] = total
                last.row = _tuple_new(IrqLine, (irq, (total,), *last.rest))
            rows[irq] = last.row
        return rows

    def _read_planned(self, plan: tuple) -> tuple[dict | _Column | None, bool]:
        """The plan's rows in `order`, or only their totals (_Column) where
        /proc/stat gives them all (None: fall back to the full loop), and
        whether a row read one by one changed anything but its counts (kept
        across a fallback: _sysfs_row says a change once)."""
        entries, others = plan
        stat_plan = self._stat_plan
        if stat_plan is not None:
            column = self._read_stat_plan(stat_plan)
            if column is None:
                return None, False
            if not others:
                return _Column(stat_plan, column), False
            planned = self._stat_rows(stat_plan, column)
        else:
            planned = self._read_plan(entries)
            if planned is None or not others:
                return planned, False
        moved = False
        read: dict[str, IrqLine] = {}
        for irq in others:
            try:
                row, changed = self._sysfs_row(irq)
            except (_Stale, FactUnavailable, ValueError):
                return None, moved  # the full loop reads it again and says why
            moved |= changed
            if row is not None:
                read[irq] = row
        rows = {}
        for irq in self.order:
            row = planned.get(irq)
            if row is None:
                row = read.get(irq)
                if row is None:
                    continue  # a row show_interrupts would skip (_sysfs_row), or absent
            rows[irq] = row
        return rows, moved

    def _read_rows(self, retry: bool = False) -> tuple[dict | _Column, set, bool, int, bool]:
        """(rows by IRQ in `order`, or the stat plan's _Column; the IRQs to
        take from /proc/interrupts; whether any was readable; rows that
        could not be parsed; whether a row changed anything but its counts)."""
        plan = self._plan
        moved = False
        if plan is not None and not retry:
            planned, moved = self._read_planned(plan)
            if planned is not None:
                self.plan_samples += 1
                return planned, set(), True, 0, moved
            self._plan = self._stat_plan = None
        rows: dict[str, IrqLine] = {}
        fast = 0  # IRQs read by the inline path below (the plan's entries)
        others: list[str] = []  # IRQs read by _sysfs_row (the plan's others)
        missing: set[str] = set()
        readable = False
        bad = 0
        absent, from_proc = self.absent, self.from_proc
        last_raw, count_fds, pread = self.last_raw, self.count_fds, os.pread
        for irq in self.order:
            if absent and irq in absent:
                continue
            if from_proc and irq in from_proc:
                missing.add(irq)
                continue
            # _sysfs_row's path for a working MSI vector, inline; anything
            # else goes through it. Once every IRQ went this way, the next
            # samples read them through the plan (_read_plan).
            last = last_raw.get(irq)
            if last is not None and last.exclusive:
                fd = count_fds.get(irq)
                try:
                    raw = pread(fd, SYSFS_PAGE, 0) if fd is not None else None
                except OSError:
                    raw = None  # _sysfs_row reads it again and says why
                if raw is not None and raw[-1:] == b"\n":
                    try:
                        _recount(irq, last, raw)
                    except ValueError:  # as below: a damaged recording
                        bad += 1
                        continue
                    rows[irq] = last.row
                    readable = True
                    fast += 1
                    continue
            try:
                row, changed = self._sysfs_row(irq)
            except _Stale:
                if not retry:
                    raise
                # Freed again right after its rediscovery: this sample takes
                # it from /proc/interrupts; the next rediscovery retries sysfs.
                missing.add(irq)
                continue
            except FactUnavailable as exc:
                self.from_proc.add(irq)
                self.fallback_errors[irq] = exc
                missing.add(irq)
                continue
            except ValueError:  # a count that is not a number: a damaged recording
                bad += 1
                continue
            readable = True
            moved |= changed
            others.append(irq)
            if row is not None:
                rows[irq] = row
        # A plan once every vector that can be read inline was: one read by
        # _sysfs_row that is now exclusive (its first read) is read inline
        # at the next sample, and the plan built then.
        if fast and not bad and not missing and not any(
                irq in last_raw and last_raw[irq].exclusive for irq in others):
            skip = set(others)
            entries = tuple((irq, count_fds[irq], last_raw[irq]) for irq in self.order
                            if irq not in skip and irq in rows)
            self._plan = (entries, tuple(others))
            self._stat_plan = self._build_stat_plan(entries) if self.stat_usable else None
        return rows, missing, readable, bad, moved

    def _steady(self, rows: dict[str, IrqLine]) -> None:
        """Which devices need no msi_irqs/ listing (module docstring): those
        holding vfio-intx or vfio-msi handlers on rows read from sysfs, and
        vfio-msix ones where MSI-X cannot grow without a teardown."""
        held: set[str] = set()
        for irq, row in rows.items():
            if irq in self.from_proc or irq not in self.last_raw:
                continue
            for h in row.handlers:
                v = parse_vfio_handler(h)
                if v is not None and v.mode in self.steady_modes:
                    held.add(v.bdf)
        for bdf, w in self.watched.items():
            w.steady = bdf.lower() in held
            if w.steady:
                _close_dir(w)
        self._listed = [(bdf, w) for bdf, w in self.watched.items() if not w.steady]

    def _rediscover(self, counted: bool = True) -> tuple[Interrupts | None, int]:
        """Read the whole /proc/interrupts once: each device's vfio rows
        (found by handler name, as the /proc/interrupts model does), with its
        irq and msi_irqs/, become its watched IRQs. `counted`: False when the
        read is the per-sample fallback, not a rediscovery."""
        self.discover = False
        self._plan = self._stat_plan = None
        self.stat_usable = True  # tried again with the rows found now
        if counted:
            self.rediscoveries += 1
            self.absent.clear()
            self.last_raw.clear()  # every actions file read again
            for bdf, w in self.watched.items():
                # msi_irqs/ and irq as they are now (a freed vector, a domain event)
                _close_dir(w)
                w.listing, w.live_irq = self._listing(bdf, w), self._live_irq(bdf)
        candidates = {i for w in self.watched.values()
                      for i in (w.static_irq, w.live_irq, *(w.listing or ())) if i}
        data = self._read_proc()
        table, odd = (sample_table(data, frozenset(candidates)) if data is not None else (None, 0))
        for bdf, w in self.watched.items():
            irqs = {i for i in (w.static_irq, w.live_irq, *(w.listing or ())) if i}
            if table is not None:
                irqs |= {line.irq for line, _ in table.vfio_lines(bdf)}
            w.irqs = frozenset(irqs)
        self.order = tuple(sorted({i for w in self.watched.values() for i in w.irqs}, key=_irq_key))
        for fds in (self.count_fds, self.action_fds):
            for irq in [i for i in fds if i not in self.order]:
                os.close(fds.pop(irq))
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


def _recount(irq: str, last: _Last, raw: bytes) -> None:
    """Take `raw`, a new per_cpu_count of the row `last` holds (same
    handlers, same chip: only its counts moved), into `last`: its row with
    the new counts, in place (a new row only when they differ). ValueError
    as _parse_counts, `last` unchanged."""
    lead, tail = last.hint
    if (raw.startswith(lead) and raw.endswith(tail)
            and (mid := raw[len(lead):len(raw) - len(tail)]).isdigit() and mid[0] != 48):
        # _parse_counts' first case, inline: the vector counts on the one CPU
        # it counted on before (the steady case of an affine vector).
        counts: tuple[int, ...] = (int(mid),)
    else:
        counts, last.hint = _parse_counts(raw, last.hint)
    if not last.exclusive:
        last.raw = raw
    if last.row is not None and last.row[1] == counts:
        return
    # IrqLine(irq, counts, *last.rest) without the NamedTuple's __new__
    # frame: the same tuple, of the same class (half the cost; bench/daemon_bench.py).
    last.row = _tuple_new(IrqLine, (irq, counts, *last.rest))


# tuple.__new__: builds a NamedTuple from its fields in order, as its
# generated __new__ does, without that Python-level frame.
_tuple_new = tuple.__new__


# vfio-pci adds vectors to enabled MSI-X from Linux 6.5 (dynamic MSI-X,
# pci_msix_alloc_irq_at): before it, a vfio-msix vector set changes only by
# a teardown, which the kept descriptors see (module docstring).
DYNAMIC_MSIX_RELEASE = (6, 5)


def _steady_modes(host: HostRoot) -> tuple[str, ...]:
    """The vfio modes whose vector set cannot change without freeing every
    vector, on this tree's kernel (the recorded one for --host-root)."""
    release = read_kernel_release(host)
    if release is not None and release < DYNAMIC_MSIX_RELEASE:
        return ("intx", "msi", "msix")
    return ("intx", "msi")


def _close_dir(w: _Watched) -> None:
    if w.dirfd is not None:
        os.close(w.dirfd)
        w.dirfd = None
    w.names = None


def _irq_key(irq: str) -> tuple[int, str]:
    return (int(irq), irq) if irq.isdigit() else (1 << 62, irq)
