"""The sampler's steady counts from /proc/stat (facts/sampler.py, the stat
plan) against per_cpu_count, which a fresh Sampler reads, at every sample.

The stat plan serves a steady sample's vfio MSI/MSI-X vectors (SR-IOV VFs
have no INTx pin: nothing else to read; beside devices on INTx, their lines
are read one by one). Its counts come from /proc/stat's intr line, one read
for all vectors, and one kept actions descriptor per device (its sentinel)
stands in for the per-vector reads that noticed a teardown. The trees are
SR-IOV VFs of a real NVMe function
(tests/data/hosts/configs/cap-phy32.txt, as bench/scale_bench.py), their
proc/stat written from their per_cpu_count (hosttree.write_proc_stat), as
the kernel keeps both; tests/lab/test_lab_live.py checks on a real kernel
that the two agree.
"""

from __future__ import annotations

from pathlib import Path

from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.model import device_interrupts
from vfio_advisor.facts.pci import read_pci_device
from vfio_advisor.facts.sampler import STAT_WRAP, Sampler
from vfio_advisor.testing.hosttree import (Device, Host, build, irq_row, load_config, write_irq_descriptor,
                                          write_proc_stat)

CPUS = 4
VECTORS = 3
NVME = ("cap-phy32.txt", "2e:00.0")


def bdf(i: int) -> str:
    return f"0000:21:00.{i}"


def irq_of(vf: int, k: int) -> int:
    return 60 + vf * VECTORS + k


def write_counts(root: Path, irq: int, counts: list[int], text: str | None = None) -> None:
    # In place: the daemon keeps the file open, as the kernel's.
    with open(root / f"sys/kernel/irq/{irq}/per_cpu_count", "r+") as f:
        f.write(text if text is not None else ",".join(map(str, counts)) + "\n")
        f.truncate()


# Devices on INTx beside the VFs (a GPU's audio function, say): line -> BDF.
INTX = {16: "0000:30:00.0", 17: "0000:31:00.0"}


def vf_tree(root: Path, vfs: int = 3, first: int = 5, intx: bool = False) -> dict[int, list[int]]:
    """`vfs` VFs on MSI-X, every vector counting `first` on one CPU; with
    `intx`, two devices on INTx lines 16 and 17 as well."""
    config = load_config(*NVME)
    counts = {}
    rows = ["     " + "".join(f"CPU{c:<8}" for c in range(CPUS))]
    lines = INTX if intx else {}
    for line, owner in lines.items():
        counts[line] = [first] + [0] * (CPUS - 1)
        rows.append(irq_row(line, counts[line], "IR-IO-APIC", "fasteoi", [f"vfio-intx({owner})"]))
    for vf in range(vfs):
        for k in range(VECTORS):
            irq = irq_of(vf, k)
            counts[irq] = [0] * CPUS
            counts[irq][irq % CPUS] = first
            rows.append(irq_row(irq, counts[irq], "IR-PCI-MSIX", "edge", [f"vfio-msix[{k}]({bdf(vf)})"]))
    devices = [Device(bdf(vf), config, irq=0, msi_irq_mode="msix",
                      msi_irqs=tuple(irq_of(vf, k) for k in range(VECTORS))) for vf in range(vfs)]
    devices += [Device(owner, config, irq=line) for line, owner in lines.items()]
    build(root, Host(devices=devices, interrupts="\n".join(rows) + "\n"))
    for line, owner in lines.items():
        write_irq_descriptor(root, line, ",".join(map(str, counts[line])), f"vfio-intx({owner})",
                             "IR-IO-APIC", line, "level")
    (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel/osrelease").write_text("6.1.0-28-amd64\n")  # MSI-X cannot grow in place
    for vf in range(vfs):
        for k in range(VECTORS):
            irq = irq_of(vf, k)
            write_irq_descriptor(root, irq, ",".join(map(str, counts[irq])), f"vfio-msix[{k}]({bdf(vf)})",
                                 "IR-PCI-MSIX", irq * 2048, "edge")
    write_proc_stat(root, nr_irqs=256)
    return counts


class Compared:
    """A long-lived Sampler, each sample checked against a fresh one (which
    reads every per_cpu_count: its first sample is a rediscovery)."""

    def __init__(self, root: Path):
        self.root = root
        host = HostRoot(str(root))
        self.devices = {b: read_pci_device(host, b) for b in sorted(p.name for p in (root / "sys/bus/pci/devices").iterdir())}
        self.sampler = Sampler(host)
        self.sampler.watch(self.devices.items())
        self.lazy = 0  # samples whose table was built only when asked for

    def sample(self) -> dict:
        sampled, odd = self.sampler.sample_counts()
        # On the steady path the rows are built only when asked for
        # (Sampled.table); the totals handed over without them must be the
        # rows' totals, in the table's order.
        self.lazy += sampled._table is None
        kept = sampled.table
        assert sampled.totals == [sum(line.counts) for line in kept.lines]
        fresh_sampler = Sampler(HostRoot(str(self.root)))
        fresh_sampler.watch(self.devices.items())
        fresh, fresh_odd = fresh_sampler.sample()
        fresh_sampler.close()
        assert odd == fresh_odd == 0
        got = {b: device_interrupts(b, d, kept) for b, d in self.devices.items()}
        for b, d in self.devices.items():
            assert got[b] == device_interrupts(b, d, fresh), b
        return got


def totals(got: dict) -> dict:
    return {irq: n for dev in got.values() for irq, n in dev.vector_counts}


def test_steady_counts_come_from_proc_stat_and_equal_per_cpu_count(tmp_path):
    counts = vf_tree(tmp_path)
    c = Compared(tmp_path)
    for step in range(1, 9):
        got = c.sample()
        assert totals(got) == {str(irq): sum(v) for irq, v in counts.items()}
        for irq, v in counts.items():  # the CPU each vector counts on, then others
            v[(irq + step // 4) % CPUS] += 3 * step + irq
            write_counts(tmp_path, irq, v)
        write_proc_stat(tmp_path, nr_irqs=256)
    # sample 1 rediscovers, sample 2 builds the plan, the rest read /proc/stat
    # and hand over their totals, building the rows only when asked
    assert c.sampler.stat_samples == 6 and c.sampler.rediscoveries == 1 and c.lazy == 6


def test_proc_stat_is_what_the_plan_reads(tmp_path):
    # Only /proc/stat moves: a sampler that read per_cpu_count would not see it.
    vf_tree(tmp_path)
    s = Sampler(HostRoot(str(tmp_path)))
    devices = {bdf(vf): read_pci_device(s.host, bdf(vf)) for vf in range(3)}
    s.watch(devices.items())
    for _ in range(3):
        s.sample()
    text = (tmp_path / "proc/stat").read_text().replace(" 5 ", " 6 ", 1)  # the first vector's 5
    (tmp_path / "proc/stat").write_text(text)
    table, _ = s.sample()
    assert totals({b: device_interrupts(b, d, table) for b, d in devices.items()})[str(irq_of(0, 0))] == 6


def test_a_device_whose_vectors_were_set_up_again_is_seen_through_its_sentinel(tmp_path):
    """Its vectors freed and their numbers given to another device's queues
    (on a real kernel the kept descriptor reads ENODEV; in a tree, its
    sentinel's actions read another text): the next sample reads every
    per_cpu_count again and finds the rows changed, as a fresh sampler does."""
    vf_tree(tmp_path)
    c = Compared(tmp_path)
    for _ in range(3):
        c.sample()
    assert c.sampler.stat_samples
    shape = c.sampler.shape
    for k in range(VECTORS):
        (tmp_path / f"sys/kernel/irq/{irq_of(0, k)}/actions").write_text(f"nvme0q{k}\n")
    got = c.sample()
    assert got[bdf(0)].mode != "msix" and c.sampler.shape != shape
    assert got[bdf(1)].mode == "msix"


def test_a_total_that_fell_is_read_from_per_cpu_count_again(tmp_path):
    counts = vf_tree(tmp_path, first=50)
    c = Compared(tmp_path)
    for _ in range(3):
        c.sample()
    served = c.sampler.stat_samples
    for irq, v in counts.items():  # set up again under the same numbers: back to zero
        write_counts(tmp_path, irq, [0] * CPUS)
    write_proc_stat(tmp_path, nr_irqs=256)
    got = c.sample()
    assert set(totals(got).values()) == {0}
    assert c.sampler.stat_samples == served  # this sample: per_cpu_count
    c.sample()
    c.sample()
    assert c.sampler.stat_samples == served + 2  # the plan again from the next sample


def test_tot_count_past_2_to_the_32_keeps_the_per_cpu_count_sum(tmp_path):
    """tot_count is an unsigned int; per_cpu_count's sum over two CPUs is
    not. The plan keeps the difference, so the totals go on as the sums."""
    counts = vf_tree(tmp_path)
    big = counts[irq_of(1, 2)]
    big[0], big[1] = 3_000_000_000, 2_000_000_000
    write_counts(tmp_path, irq_of(1, 2), big)
    write_proc_stat(tmp_path, nr_irqs=256)
    stat = (tmp_path / "proc/stat").read_text()
    assert " 5000000000 " in stat
    (tmp_path / "proc/stat").write_text(stat.replace(" 5000000000 ", f" {5_000_000_000 % STAT_WRAP} "))
    c = Compared(tmp_path)
    for step in range(1, 6):
        got = c.sample()
        assert totals(got)[str(irq_of(1, 2))] == sum(big)
        big[1] += 1000 * step
        write_counts(tmp_path, irq_of(1, 2), big)
        write_proc_stat(tmp_path, nr_irqs=256)
        stat = (tmp_path / "proc/stat").read_text()
        (tmp_path / "proc/stat").write_text(stat.replace(f" {sum(big)} ", f" {sum(big) % STAT_WRAP} "))
    assert c.sampler.stat_samples == 3


def test_proc_stat_behind_per_cpu_count_is_not_used(tmp_path):
    """A /proc/stat that is not the per_cpu_count's counter (a recording
    from another moment): behind the counts just read, so the plan reads
    each per_cpu_count, and the counts stay theirs."""
    counts = vf_tree(tmp_path)
    (tmp_path / "proc/stat").write_text((tmp_path / "proc/stat").read_text().replace(" 5 ", " 4 "))
    c = Compared(tmp_path)
    for step in range(1, 5):
        c.sample()
        for irq, v in counts.items():
            v[irq % CPUS] += step
            write_counts(tmp_path, irq, v)
    assert c.sampler.stat_samples == 0 and not c.sampler.stat_usable


def test_a_damaged_intr_line_falls_back_for_that_sample(tmp_path):
    counts = vf_tree(tmp_path)
    c = Compared(tmp_path)
    for _ in range(3):
        c.sample()
    served = c.sampler.stat_samples
    for irq, v in counts.items():
        v[irq % CPUS] += 10
        write_counts(tmp_path, irq, v)
    write_proc_stat(tmp_path, nr_irqs=256)
    stat = (tmp_path / "proc/stat").read_text()
    (tmp_path / "proc/stat").write_text(stat.replace(" 15 ", " 1x5 ", 1))
    got = c.sample()
    assert totals(got) == {str(irq): sum(v) for irq, v in counts.items()}
    assert c.sampler.stat_samples == served


def test_no_proc_stat_reads_each_per_cpu_count(tmp_path):
    counts = vf_tree(tmp_path)
    (tmp_path / "proc/stat").unlink()
    c = Compared(tmp_path)
    for step in range(1, 5):
        got = c.sample()
        assert totals(got) == {str(irq): sum(v) for irq, v in counts.items()}
        for irq, v in counts.items():
            v[irq % CPUS] += step
            write_counts(tmp_path, irq, v)
    assert c.sampler.stat_samples == 0 and c.sampler._plan is not None


def test_vfs_beside_devices_on_intx_lines_read_their_vectors_from_proc_stat(tmp_path):
    """The plan's vectors from /proc/stat, the INTx lines one by one (their
    sharers come and go): a sharer that joins a line shows at that sample."""
    counts = vf_tree(tmp_path, intx=True)
    c = Compared(tmp_path)
    for step in range(1, 7):
        got = c.sample()
        assert totals(got) == {str(irq): sum(v) for irq, v in counts.items()}  # the lines' too
        assert [got[b].mode for b in INTX.values()] == ["intx", "intx"]
        for irq, v in counts.items():
            v[irq % CPUS] += step
            write_counts(tmp_path, irq, v)
        write_proc_stat(tmp_path, nr_irqs=256)
    assert c.sampler.stat_samples == 4
    shape = c.sampler.shape
    (tmp_path / "sys/kernel/irq/16/actions").write_text(f"vfio-intx({INTX[16]}),ehci_hcd:usb1\n")
    got = c.sample()
    assert got[INTX[16]].shared_with == ("ehci_hcd:usb1",) and c.sampler.shape != shape
    assert c.sampler.stat_samples == 5


def test_a_line_that_changed_before_a_fallback_still_changes_the_shape(tmp_path):
    """Line 16 gains a sharer and line 17's count is damaged in the same
    sample: the plan reads 16 (a change, which _sysfs_row says once), falls
    back at 17, and the full loop reads 16 again. The sample still shows the
    sharer and changes its shape, or the daemon would keep 16's device as it
    was (runtime.Watcher keys on the shape)."""
    vf_tree(tmp_path, intx=True)
    s = Sampler(HostRoot(str(tmp_path)))
    devices = {b: read_pci_device(s.host, b) for b in sorted(p.name for p in (tmp_path / "sys/bus/pci/devices").iterdir())}
    s.watch(devices.items())
    for _ in range(3):
        s.sample()
    assert s.plan_samples
    shape = s.shape
    (tmp_path / "sys/kernel/irq/16/actions").write_text(f"vfio-intx({INTX[16]}),ehci_hcd:usb1\n")
    write_counts(tmp_path, 17, [], text="5,x,0,0\n")
    table, odd = s.sample()
    assert odd == 1 and s.shape != shape
    assert device_interrupts(INTX[16], devices[INTX[16]], table).shared_with == ("ehci_hcd:usb1",)
