"""Two samplers against the /proc/interrupts model.

1. The daemon's sampler (facts.interrupts.sample_table) against the full
parser, on every recorded /proc/interrupts: the corpus (real hosts, with
provenance) and the lab's vfio captures. Both go through the same device
model (facts.model.device_interrupts), so advise and the daemon see the same
modes, vectors, sharers and counts.

2. The sysfs sampler (facts/sampler.py) against the /proc/interrupts model.

`device_interrupts` over the FULL parsed /proc/interrupts is the reference
(what `advise` uses). The sampler must give the same modes, vectors,
INTx line, sharers and counts, from /sys/kernel/irq and msi_irqs/:

- on every lab capture (real guest kernels, lab/captures/*/ hold
  sys/kernel/irq/*/ and msi_irqs/) for every PCI device of the capture;
- over each lab scenario's moments in order (deltas);
- on hosts hypothesis makes, rendered both ways from one model;
- with the sysfs files gone (fallback to /proc/interrupts, said once).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.lab.moments import STEPPED, moments
from hypothesis import given, settings
from hypothesis import strategies as st

from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.interrupts import parse_interrupts, sample_table
from vfio_advisor.facts.model import device_interrupts
from vfio_advisor.facts.pci import read_pci_device
from vfio_advisor.facts.sampler import CROSS_CHECK_SAMPLES, Sampler

REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "tests/data/corpus/proc-interrupts").glob("*.txt")) + sorted(
    (REPO / "lab/captures").glob("*/proc/interrupts"))


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_there_are_files_with_vfio_rows():
    assert sum(1 for p in FILES if "vfio-" in p.read_text(errors="replace")) >= 5


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_sampler_agrees_with_the_full_parser(path):
    data = path.read_bytes()
    full = parse_interrupts(data.decode("utf-8", "replace"))
    numbered = frozenset(line.irq for line in full.lines if line.number is not None)
    # Every numbered row wanted: the sampler must read each exactly as the parser.
    table, skipped = sample_table(data, numbered)
    assert table.cpus == full.cpus
    by_irq = full.by_irq()
    for line in table.lines:
        assert line == by_irq[line.irq]
    assert {line.irq for line in table.lines} == {i for i in numbered if i in by_irq}
    assert skipped == sum(1 for line in full.lines if line.irq in numbered and line.truncated)
    # Only the vfio rows (the daemon's steady state): the same device facts.
    vfio_only, _ = sample_table(data, frozenset())
    bdfs = {v.bdf for line in full.lines for v in line.vfio}
    for bdf in bdfs:
        assert device_interrupts(bdf, None, vfio_only) == device_interrupts(bdf, None, full), bdf
        assert device_interrupts(bdf, None, table) == device_interrupts(bdf, None, full), bdf


def test_label_inside_a_name_is_not_a_row():
    """"16:" also occurs inside 0000:16:00.0; only a row's own label counts,
    in a vfio row and in another driver's (ahci names its handler after the
    BDF: ahci[0000:17:00.0]); a wanted IRQ without a row of its own finds none."""
    text = ("           CPU0       CPU1\n"
            " 40:          5          0  IR-PCI-MSI 1-edge  vfio-msi[0](0000:16:00.0)\n"
            " 41:          2          0  IR-PCI-MSI 2-edge  ahci[0000:17:00.0]\n"
            " 16:          7          1  IR-IO-APIC  16-fasteoi   ehci_hcd:usb1\n")
    table, skipped = sample_table(text, frozenset({"16", "17"}))
    assert sorted(line.irq for line in table.lines) == ["16", "40"] and skipped == 0
    assert table.by_irq()["16"].total == 8


def test_rows_cut_short_are_counted_and_headerless_fragments_read():
    text = ("           CPU0       CPU1       CPU2\n"
            " 41:          5          0\n"  # cut inside its columns
            " 42:          1          2          3  IR-PCI-MSI 2-edge  vfio-msix[0](0000:01:00.0)\n")
    table, skipped = sample_table(text, frozenset({"41"}))
    assert skipped == 1 and table.by_irq()["42"].total == 6
    frag, _ = sample_table(" 42:  1  2  IR-PCI-MSI 2-edge  vfio-msix[0](0000:01:00.0)\n", frozenset())
    assert frag.cpus is None and frag.by_irq()["42"].handlers == ("vfio-msix[0](0000:01:00.0)",)


def test_gapped_cpu_numbers_count_as_columns():
    """Offline CPUs leave gaps in the header (CPU0 CPU2); columns follow the words."""
    text = ("           CPU0       CPU2\n"
            " 45:          4          6  IR-PCI-MSI 1-edge  vfio-msi[0](0000:07:00.0)\n")
    table, _ = sample_table(text, frozenset())
    assert table.cpus == 2 and table.by_irq()["45"].counts == (4, 6)


# --- facts/sampler.py: the sysfs sampler -------------------------------------

CAPTURES = REPO / "lab/captures"
MOMENTS = sorted(p.name for p in CAPTURES.iterdir() if (p / "proc/interrupts").exists())
SCENARIOS = {name: moments(name) for name in STEPPED}


def devices_of(root: Path) -> list[str]:
    return sorted(os.listdir(root / "sys/bus/pci/devices"))


def vfio_bdfs(root: Path) -> list[str]:
    """The devices a daemon watches: vfio-pci's (the captures hold
    sys/kernel/irq for their IRQs only)."""
    out = []
    for b in devices_of(root):
        link = root / f"sys/bus/pci/devices/{b}/driver"
        if link.is_symlink() and os.path.basename(os.readlink(link)) == "vfio-pci":
            out.append(b)
    return out


def reference(root: Path, bdf: str):
    host = HostRoot(str(root))
    device = read_pci_device(host, bdf)
    table = parse_interrupts((root / "proc/interrupts").read_text())
    return device, device_interrupts(bdf, device, table)


def sampled(root: Path, bdfs, devices, notes=None):
    s = Sampler(HostRoot(str(root)), (notes.append if notes is not None else None))
    s.watch((b, devices[b]) for b in bdfs)
    table, odd = s.sample()
    return s, table, odd


def sysfs_total(root: Path, irq: str) -> int:
    return sum(int(c) for c in (root / f"sys/kernel/irq/{irq}/per_cpu_count").read_text().split(","))


def proc_total(root: Path, irq: str) -> int:
    line = next(r for r in (root / "proc/interrupts").read_text().splitlines()
                if r.strip().startswith(f"{irq}:"))
    return sum(int(t) for t in line.split(":", 1)[1].split() if t.isdigit())


def test_every_capture_is_covered():
    assert len(MOMENTS) >= 20, MOMENTS
    # the sysfs path is what is tested: most captures hold sys/kernel/irq
    with_sysfs = [m for m in MOMENTS if any((CAPTURES / m / "sys/kernel/irq").glob("*/per_cpu_count"))]
    assert len(with_sysfs) >= 19, with_sysfs


@pytest.mark.parametrize("moment", MOMENTS)
def test_sampler_agrees_with_the_proc_interrupts_model(moment):
    root = CAPTURES / moment
    bdfs = devices_of(root)
    refs = {b: reference(root, b) for b in bdfs}
    devices = {b: d for b, (d, _) in refs.items()}
    notes = []
    s, table, odd = sampled(root, bdfs, devices, notes)
    assert odd == 0
    from_sysfs = 0
    for bdf in bdfs:
        want = refs[bdf][1]
        got = device_interrupts(bdf, devices[bdf], table)
        assert (got.mode, got.irqs, got.intx_irq, got.shared_with) == \
               (want.mode, want.irqs, want.intx_irq, want.shared_with), bdf
        for (irq, n), (irq2, m) in zip(got.vector_counts, want.vector_counts):
            assert irq == irq2
            sys_file = root / f"sys/kernel/irq/{irq}/per_cpu_count"
            if sys_file.exists():
                from_sysfs += 1
                # What the kernel counted in per_cpu_count; equal to the
                # /proc/interrupts row wherever the capture read both files
                # at one count (the guest kept taking interrupts between the
                # two reads of a moment, e.g. virtio0 on the shared line).
                assert n == sysfs_total(root, irq)
                if sysfs_total(root, irq) == proc_total(root, irq):
                    assert n == m, (bdf, irq)
            else:
                assert n == m, (bdf, irq)
        assert len(got.vector_counts) == len(want.vector_counts)
        if want.intx_count is not None and want.intx_irq is not None and \
                (root / f"sys/kernel/irq/{want.intx_irq}/per_cpu_count").exists():
            assert got.intx_count == sysfs_total(root, str(want.intx_irq))
    vfio_rows = sum(len(refs[b][1].vector_counts) for b in bdfs)
    if any((root / "sys/kernel/irq").glob("*/per_cpu_count")):
        assert from_sysfs == vfio_rows  # every vfio vector came from sysfs
    assert s.full_reads == 1  # discovery only


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_deltas_and_rediscovery(scenario, tmp_path):
    """One sampler over a tree that steps through the scenario's moments
    (a symlink, as the fleet tier does): modes and counts per moment equal
    the /proc/interrupts model's, so deltas do too, and /proc/interrupts is
    read again only when msi_irqs/ or irq changed."""
    moments = SCENARIOS[scenario]
    link = tmp_path / "root"
    link.symlink_to(CAPTURES / moments[0])
    bdfs = devices_of(CAPTURES / moments[0])
    devices = {b: reference(CAPTURES / moments[0], b)[0] for b in bdfs}
    s = Sampler(HostRoot(str(link)))
    s.watch((b, devices[b]) for b in bdfs)
    prev_got = prev_want = None
    reads = []
    for moment in moments:
        tmp = tmp_path / "next"
        tmp.symlink_to(CAPTURES / moment)
        os.replace(tmp, link)
        before = s.rediscoveries
        table, _ = s.sample()
        reads.append(s.rediscoveries - before)
        table_ref = parse_interrupts((CAPTURES / moment / "proc/interrupts").read_text())
        got = {b: device_interrupts(b, devices[b], table) for b in bdfs}
        want = {b: device_interrupts(b, devices[b], table_ref) for b in bdfs}
        for b in bdfs:
            assert (got[b].mode, got[b].irqs, got[b].shared_with, got[b].vector_counts) == \
                   (want[b].mode, want[b].irqs, want[b].shared_with, want[b].vector_counts), (moment, b)
            if prev_got is not None:
                d_got = {i: n - dict(prev_got[b].vector_counts).get(i, n) for i, n in got[b].vector_counts}
                d_want = {i: n - dict(prev_want[b].vector_counts).get(i, n) for i, n in want[b].vector_counts}
                assert d_got == d_want
        prev_got, prev_want = got, want
    assert reads[0] == 1
    if scenario == "switch":
        # INTx (1, 2), MSI (3, 4), MSI-X on 00:05.0 and 00:03.0's MSI off (5):
        # msi_irqs/ changed at 3 and 5 only
        assert reads == [1, 0, 1, 0, 1]
    else:
        assert sum(reads[1:]) == 0, reads


def test_cross_check_reads_proc_interrupts_every_n_samples():
    root = CAPTURES / "modes"
    # the devices a daemon watches: vfio-pci's (the others' lines have no
    # sysfs files in the captures, and would be read from /proc/interrupts)
    bdfs = vfio_bdfs(root)
    assert len(bdfs) == 3
    devices = {b: reference(root, b)[0] for b in bdfs}
    s, _, _ = sampled(root, bdfs, devices)
    for _ in range(CROSS_CHECK_SAMPLES * 2):
        s.sample()
    assert s.full_reads == s.rediscoveries == 1 + 2


def test_missing_sysfs_falls_back_to_proc_interrupts_and_says_so_once(tmp_path):
    """A tree without /sys/kernel/irq (a kernel without SPARSE_IRQ, or older
    than 4.9): every row from /proc/interrupts, one note."""
    root = tmp_path / "modes"
    shutil.copytree(CAPTURES / "modes", root, symlinks=True)
    shutil.rmtree(root / "sys/kernel/irq")
    bdfs = devices_of(root)
    refs = {b: reference(root, b) for b in bdfs}
    devices = {b: d for b, (d, _) in refs.items()}
    notes = []
    s, table, _ = sampled(root, bdfs, devices, notes)
    for _ in range(3):
        table, _ = s.sample()
    for b in bdfs:
        assert device_interrupts(b, devices[b], table) == refs[b][1]
    assert len(notes) == 1 and "/proc/interrupts" in notes[0] and "4.9" in notes[0], notes
    assert s.full_reads == 4  # the fallback reads it at each sample


def test_a_cut_per_cpu_count_is_not_trusted(tmp_path):
    """per_cpu_count cut at the sysfs page (no final newline): that IRQ
    comes from /proc/interrupts."""
    root = tmp_path / "stays"
    shutil.copytree(CAPTURES / "stays-intx-4", root, symlinks=True)
    (root / "sys/kernel/irq/23/per_cpu_count").write_text("1")  # cut, no newline
    bdfs = vfio_bdfs(root)
    refs = {b: reference(root, b) for b in bdfs}
    devices = {b: d for b, (d, _) in refs.items()}
    notes = []
    _, table, _ = sampled(root, bdfs, devices, notes)
    assert device_interrupts("0000:00:03.0", devices["0000:00:03.0"], table).intx_count == 3600
    assert len(notes) == 1 and "cut" in notes[0]


# --- hypothesis: one model, rendered as /proc/interrupts and as sysfs ---------

BDFS = ["0000:01:00.0", "0000:01:00.1", "0000:02:00.0"]


@st.composite
def hosts(draw):
    cpus = draw(st.integers(1, 6))
    possible = cpus + draw(st.integers(0, 2))  # offline CPUs never counted
    rows = {}  # irq -> (chip, handlers, counts)
    next_msi = 40
    devices = {}
    for i, bdf in enumerate(BDFS):
        mode = draw(st.sampled_from(["intx", "msi", "msix", "none"]))
        line = 16 + i % 2  # 01:00.0 and 02:00.0 may share line 16
        msi = ()
        if mode in ("msi", "msix"):
            n = draw(st.integers(1, 4))
            msi = tuple(range(next_msi, next_msi + n))
            next_msi += n
            for k, irq in enumerate(msi):
                # a vector without its vfio handler yet (the guest has not set it)
                handlers = [] if draw(st.booleans()) and k else [f"vfio-{mode}[{k}]({bdf})"]
                rows[irq] = ("IR-PCI-MSI", handlers, [draw(st.integers(0, 9999)) for _ in range(cpus)])
        chip, handlers, counts = rows.get(line, ("IR-IO-APIC", [], [0] * cpus))
        if mode == "intx":
            handlers = handlers + [f"vfio-intx({bdf})"]
            counts = [c + draw(st.integers(0, 999)) for c in counts]
        if draw(st.booleans()):
            handlers = handlers + [draw(st.sampled_from(["ehci_hcd:usb1", "snd_hda_intel:card0", "i801_smbus"]))]
            counts = [c + draw(st.integers(0, 50)) for c in counts]
        rows[line] = (chip, handlers, counts)
        devices[bdf] = (line, msi, "msix" if mode == "msix" else "msi")
    return cpus, possible, rows, devices


def render_tree(root: Path, cpus: int, possible: int, rows: dict, devices: dict) -> None:
    from vfio_advisor.testing.hosttree import Device, Host, build  # noqa: PLC0415
    from vfio_advisor.testing.hosttree import irq_row, write_irq_descriptor  # noqa: PLC0415

    text = "    " + "".join(f"CPU{i:<8}" for i in range(cpus)) + "\n"
    for irq in sorted(rows):
        chip, handlers, counts = rows[irq]
        if not handlers and not any(counts):
            continue  # show_interrupts skips it
        text += irq_row(irq, counts, chip, "edge" if "MSI" in chip else "fasteoi", handlers,
                        hwirq=irq * 8) + "\n"
    build(root, Host(devices=[Device(bdf, None, irq=line, msi_irqs=msi, msi_irq_mode=kind, driver="vfio-pci")
                              for bdf, (line, msi, kind) in devices.items()], interrupts=text))
    for irq, (chip, handlers, counts) in rows.items():
        write_irq_descriptor(root, irq, ",".join(map(str, counts + [0] * (possible - cpus))), ",".join(handlers), chip)


@settings(max_examples=60, deadline=None)
@given(hosts())
def test_sampler_equals_model_on_generated_hosts(tmp_path_factory, host):
    cpus, possible, rows, devs = host
    root = tmp_path_factory.mktemp("h")
    render_tree(root, cpus, possible, rows, devs)
    h = HostRoot(str(root))
    devices = {b: read_pci_device(h, b) for b in BDFS}
    table = parse_interrupts((root / "proc/interrupts").read_text())
    s = Sampler(h)
    s.watch((b, devices[b]) for b in BDFS)
    got_table, odd = s.sample()
    assert odd == 0
    for b in BDFS:
        assert device_interrupts(b, devices[b], got_table) == device_interrupts(b, devices[b], table), b


# --- per_cpu_count parsed by its non-zero counts ----------------------------

@st.composite
def per_cpu_texts(draw):
    """A vector's per_cpu_count over a few samples, as irqdesc.c prints it:
    mostly zeros (affine to a CPU or a few), sometimes every CPU counting."""
    cpus = draw(st.integers(1, 300))
    counts = [0] * cpus
    texts = []
    for _ in range(draw(st.integers(1, 6))):
        for _ in range(draw(st.integers(0, 3))):
            counts[draw(st.integers(0, cpus - 1))] += draw(st.sampled_from([1, 9, 10, 99, 1000, 2**40]))
        if draw(st.integers(0, 9)) == 0:
            counts = [c + draw(st.integers(0, 5)) for c in counts]
        texts.append((",".join(map(str, counts)) + "\n").encode())
    return texts


@settings(max_examples=300, deadline=None)
@given(per_cpu_texts())
def test_per_cpu_count_parse_equals_int_of_every_count(texts):
    """The fast parse (zero runs skipped, the previous text's runs as a hint)
    gives the same non-zero counts, so the same total, as int() of every
    token, sample after sample."""
    from vfio_advisor.facts.sampler import _parse_counts  # noqa: PLC0415

    hint = None
    for raw in texts:
        want = tuple(c for c in map(int, raw.split(b",")) if c)
        got, hint = _parse_counts(raw, hint)
        assert got == want and sum(got) == sum(map(int, raw.split(b","))), raw[:80]


@pytest.mark.parametrize("raw", [b"1,x,2\n", b"1, 2\n", b"-1,0\n", b"1\n2\n", b"0,+5\n", b"1_0\n", b"5"])
def test_per_cpu_count_that_is_not_the_kernels_is_refused(raw):
    from vfio_advisor.facts.sampler import _parse_counts, parse_per_cpu_count  # noqa: PLC0415

    with pytest.raises(ValueError):
        parse_per_cpu_count(raw)
    # also with a hint from a good text of the same shape
    _, hint = _parse_counts(b"0,0,1,0\n", None)
    with pytest.raises(ValueError):
        _parse_counts(raw, hint)


def test_kept_descriptors_see_counts_rewritten_in_place(tmp_path):
    """The kernel regenerates per_cpu_count at each read at offset 0; a
    recorded tree rewritten in place (the bench, the soak) reads the same
    way through the kept descriptors: a new count at every sample, no
    /proc/interrupts read, the INTx line's sharer change seen at once."""
    root = tmp_path / "stays"
    shutil.copytree(CAPTURES / "stays-intx-4", root, symlinks=True)
    bdfs = vfio_bdfs(root)
    devices = {b: reference(root, b)[0] for b in bdfs}
    s, table, _ = sampled(root, bdfs, devices)
    dev = "0000:00:03.0"
    first = device_interrupts(dev, devices[dev], table).intx_count
    pcc = root / "sys/kernel/irq/23/per_cpu_count"
    counts = [int(c) for c in pcc.read_text().split(",")]
    for step in (1, 2, 3):
        counts[0] += 10
        with open(pcc, "r+") as f:  # in place, the same inode
            f.write(",".join(map(str, counts)) + "\n")
            f.truncate()
        table, _ = s.sample()
        assert device_interrupts(dev, devices[dev], table).intx_count == first + 10 * step
    assert s.full_reads == 1 and s.count_fds, (s.full_reads, s.count_fds)
    shape = s.shape
    actions = root / "sys/kernel/irq/23/actions"
    with open(actions, "r+") as f:
        f.write(actions.read_text().strip() + ",ehci_hcd:usb9\n")
    table, _ = s.sample()
    assert "ehci_hcd:usb9" in device_interrupts(dev, devices[dev], table).shared_with
    assert s.shape != shape  # the Watcher works the device out again
    s.close()
    assert not s.count_fds and not s.action_fds
