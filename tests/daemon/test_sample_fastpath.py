"""The sampler's per-sample fast paths (facts/sampler.py) against
its plain path, at every sample.

A Sampler that has watched a tree for a while keeps state between samples:
descriptors, each IRQ's last read (_Last, updated in place when only the
counts moved: the row rebuilt from the last one, its one moving count parsed
inline with the last zero runs as the hint), and the last msi_irqs/ listing
(an identical list is not sorted again). A fresh Sampler on the same tree has
none of that: it rediscovers from /proc/interrupts, reads every sysfs file
and parses each per_cpu_count whole. Both must return the same rows, and
the kept sampler's `shape` must change whenever a row changed anything but
its counts (runtime.Watcher then works the device out again).

Trees: each lab scenario's real captures (copied, stepped through by a
symlinked root as the fleet tier does), with the vfio vectors' counts
rewritten in place between samples the ways the kernel moves them (the same
CPU, another CPU, every CPU, not at all, and once a damaged text); an MSI-X
vector added in place (vfio-pci dynamic MSI-X); a sharer joining a line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.lab.moments import STEPPED, Replay, moments

from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.interrupts import parse_interrupts
from vfio_advisor.facts.model import device_interrupts
from vfio_advisor.facts.pci import read_pci_device
from vfio_advisor.facts.sampler import Sampler

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
SCENARIOS = {name: moments(name) for name in (*STEPPED, "modes")}
# How counts move between two samples (per_cpu_count rewritten in place).
# "reset": every count back to 0 (a recording whose vector was freed and set
# up again under the same number): the CPU the fast path hinted at reads "0",
# which is no count at all (the fresh parse leaves zeros out).
MOVES = ("same-cpu", "other-cpu", "every-cpu", "idle", "same-cpu", "damaged", "same-cpu", "reset", "same-cpu")


def vfio_devices(root: Path) -> dict:
    out = {}
    for bdf in sorted(os.listdir(root / "sys/bus/pci/devices")):
        link = root / f"sys/bus/pci/devices/{bdf}/driver"
        if link.is_symlink() and os.path.basename(os.readlink(link)) == "vfio-pci":
            out[bdf] = read_pci_device(HostRoot(str(root)), bdf)
    return out


def move(root: Path, step: int, how: str) -> None:
    for pcc in sorted((root / "sys/kernel/irq").glob("*/per_cpu_count")):
        counts = [int(c) for c in pcc.read_text().replace(",x", "").strip().split(",")]
        if how == "same-cpu":
            counts[0] += 7 * step
        elif how == "other-cpu":
            counts[step % len(counts)] += 1000
        elif how == "every-cpu":
            counts = [c + 1 + i for i, c in enumerate(counts)]
        elif how == "reset":
            counts = [0] * len(counts)
        text = ",".join(map(str, counts)) + "\n"
        if how == "damaged":
            text = text.replace("\n", ",x\n")
        with open(pcc, "r+") as f:  # in place, as the kernel's file is regenerated
            f.write(text)
            f.truncate()


def shape_of(table) -> tuple:
    return tuple(line._replace(counts=None) for line in table.lines)


class Checked:
    """A long-lived Sampler on `root`, checked against a fresh one at every sample."""

    def __init__(self, root: Path, devices: dict):
        self.root, self.devices = root, devices
        self.sampler = Sampler(HostRoot(str(root)))
        self.sampler.watch(devices.items())
        self.last = None
        self.samples = 0

    def sample(self, damaged: bool = False):
        kept, odd = self.sampler.sample()
        fresh_sampler = Sampler(HostRoot(str(self.root)))
        fresh_sampler.watch(self.devices.items())
        fresh, fresh_odd = fresh_sampler.sample()
        fresh_sampler.close()
        assert odd == fresh_odd
        if damaged:
            # Both count the damaged texts (odd, above). Their rows are not
            # compared: a fresh sampler's first sample is a rediscovery, which
            # reads /proc/interrupts and may take rows from it that a steady
            # sample leaves out (as before the fast paths).
            self.samples += 1
            return kept
        assert kept.lines == fresh.lines, (self.samples, kept.lines, fresh.lines)
        for bdf, dev in self.devices.items():  # what the Watcher reads of them
            assert device_interrupts(bdf, dev, kept) == device_interrupts(bdf, dev, fresh), bdf
        if self.last is not None and shape_of(kept) != self.last[1]:
            assert self.sampler.shape != self.last[0], self.samples
        self.last = (self.sampler.shape, shape_of(kept))
        self.samples += 1
        return kept


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_kept_sampler_equals_a_fresh_one_at_every_sample(scenario, tmp_path):
    replay = Replay(tmp_path, SCENARIOS[scenario])
    checked = Checked(replay.root, vfio_devices(replay.copies[0]))
    for i, copy in enumerate(replay.copies):
        if i:
            replay.step(i)
        before = None  # the move since the last sample
        for step, how in enumerate(MOVES, 1):
            checked.sample(damaged=before == "damaged")
            move(copy, step, how)
            before = how
        checked.sample()
    # the fast paths ran: rows read from sysfs through kept descriptors
    assert checked.sampler.count_fds or scenario == "modes"
    if scenario == "modes":  # the plan: the vectors in its loop, the INTx line one by one
        assert checked.sampler.plan_samples >= 5, checked.sampler.plan_samples


def test_an_msix_vector_added_in_place_is_seen_at_the_next_sample(tmp_path):
    """vfio-pci's dynamic MSI-X (Linux 6.5) adds a vector without a
    teardown: a new msi_irqs/ entry, a new /sys/kernel/irq/N, a new row. The
    kept listing (its last names) must not hide it."""
    root = tmp_path / "switch-5"
    shutil.copytree(CAPTURES / "switch-5", root, symlinks=True)
    dev = "0000:00:05.0"
    checked = Checked(root, vfio_devices(root))
    for step in range(3):
        checked.sample()
        move(root, step + 1, "same-cpu")
    assert checked.sampler.watched[dev].names is not None  # the listing is kept
    irq = root / "sys/kernel/irq/27"
    shutil.copytree(root / "sys/kernel/irq/26", irq)
    (irq / "actions").write_text(f"vfio-msix[2]({dev})\n")
    (irq / "hwirq").write_text("81922\n")
    (irq / "per_cpu_count").write_text("42\n")
    (root / f"sys/bus/pci/devices/{dev}/msi_irqs/27").write_text("msix\n")
    proc = root / "proc/interrupts"
    rows = proc.read_text().splitlines(keepends=True)
    at = next(k for k, r in enumerate(rows) if r.strip().startswith("26:"))
    rows.insert(at + 1, rows[at].replace("26:", "27:").replace("81921", "81922")
                .replace("vfio-msix[1]", "vfio-msix[2]"))
    proc.write_text("".join(rows))
    table = checked.sample()
    got = device_interrupts(dev, checked.devices[dev], table)
    want = device_interrupts(dev, checked.devices[dev], parse_interrupts(proc.read_text()))
    assert ("27", 42) in got.vector_counts and got.irqs == want.irqs, got
    for step in range(3):
        move(root, step + 1, "same-cpu")
        checked.sample()


@pytest.mark.parametrize("release,listed", [("6.1.0-28-amd64", False), ("6.5.0-1-amd64", True),
                                             (None, True)])
def test_msix_is_listed_at_every_sample_only_where_it_can_grow(tmp_path, release, listed):
    """Before Linux 6.5 vfio-pci cannot add a vector to enabled MSI-X (QEMU
    tears MSI-X down and enables it again, which frees every vector), so an
    MSI-X device holding its vectors needs no msi_irqs/ listing per sample,
    as MSI; from 6.5, or where the tree does not say its kernel, it does."""
    root = tmp_path / "switch-5"
    shutil.copytree(CAPTURES / "switch-5", root, symlinks=True)
    if release is not None:
        (root / "proc/sys/kernel").mkdir(parents=True)
        (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
    dev = "0000:00:05.0"
    checked = Checked(root, vfio_devices(root))
    for step in range(3):
        checked.sample()
        move(root, step + 1, "same-cpu")
    assert [v for v in checked.sampler.watched[dev].irqs if v != checked.sampler.watched[dev].static_irq]
    assert checked.sampler.watched[dev].steady is not listed
    assert (dev in [bdf for bdf, _ in checked.sampler._listed]) is listed


def test_a_sharer_joining_an_intx_line_changes_the_shape(tmp_path):
    root = tmp_path / "stays"
    shutil.copytree(CAPTURES / "stays-intx-4", root, symlinks=True)
    checked = Checked(root, vfio_devices(root))
    for step in range(3):
        checked.sample()
        move(root, step + 1, "same-cpu")
    actions = root / "sys/kernel/irq/23/actions"
    text = actions.read_text().strip()
    with open(actions, "r+") as f:
        f.write(text + ",ehci_hcd:usb9\n")
    shape = checked.sampler.shape
    table = checked.sample()
    assert checked.sampler.shape != shape
    assert "ehci_hcd:usb9" in next(line for line in table.lines if line.irq == "23").handlers
    move(root, 9, "same-cpu")
    checked.sample()


def test_an_intx_line_back_after_a_reset_is_seen_without_sysfs(tmp_path):
    """A tree without /sys/kernel/irq (a recording of /proc/interrupts
    alone): a guest reboot's device reset frees vfio-intx, so the line's row
    leaves /proc/interrupts (show_interrupts skips a line without handlers),
    and QEMU requests it again after the reset. The row read from
    /proc/interrupts at that sample is taken, as a fresh sampler takes it."""
    from tests.daemon.scenarios import Scenario, intx_rows, msi_rows
    from tests.rules.examples import _ir_interrupts

    scene = Scenario(tmp_path)
    checked = Checked(scene.root, vfio_devices(scene.root))
    for rows in (intx_rows(3000), {28: None}, intx_rows(3100), intx_rows(3200), msi_rows(10)):
        (scene.root / "proc/interrupts").write_text(_ir_interrupts(rows))
        checked.sample()
