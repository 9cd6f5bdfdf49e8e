"""The daemon's sampler (facts.interrupts.sample_table) against the full
parser, on every recorded /proc/interrupts: the corpus (real hosts, with
provenance) and the lab's vfio captures. Both go through the same device
model (facts.model.device_interrupts), so advise and the daemon see the same
modes, vectors, sharers and counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfio_advisor.facts.interrupts import parse_interrupts, sample_table
from vfio_advisor.facts.model import device_interrupts

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
    """"16:" also occurs inside 0000:16:00.0; only a row's own label counts."""
    text = ("           CPU0       CPU1\n"
            " 40:          5          0  IR-PCI-MSI 1-edge  vfio-msi[0](0000:16:00.0)\n"
            " 16:          7          1  IR-IO-APIC  16-fasteoi   ehci_hcd:usb1\n")
    table, skipped = sample_table(text, frozenset({"16"}))
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
