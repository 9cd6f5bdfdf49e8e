"""/proc/interrupts parser: real captures for breadth, inline rows for edge cases."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest

from vfio_advisor.facts.interrupts import (
    IrqLine,
    VfioHandler,
    parse_interrupt_row,
    parse_interrupts,
    parse_vfio_handler,
    sample_table,
)

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus" / "proc-interrupts"


def load(name: str) -> str:
    return (CORPUS / name).read_text(encoding="utf-8")


# file -> (CPUs from the header or None for a fragment, lines parsed,
#          {(mode, bdf): vfio handler count})
CAPTURES = {
    "coreos-sosreport_2cpu.txt": (2, 24, {}),
    "cryp70n1cz-syslogs_4cpu.txt": (4, 50, {}),
    "forum-post_2015-10-24_vfio-msi_8cpu.txt": (8, 42, {("msi", "0000:07:00.0"): 1}),
    "intersched_8cpu.txt": (8, 57, {}),
    "kernel-measure_16cpu_truncated-columns.txt": (16, 46, {}),
    "martins3_int-posted_fragment.txt": (None, 1, {("msix", "0000:17:00.2"): 1}),
    "martins3_int-procfs-iommu-off_32cpu.txt": (32, 113, {}),
    "martins3_int-procfs_vfio-msix_32cpu.txt": (32, 114, {("msix", "0000:03:00.0"): 9}),
    "martins3_int-vfio_fragment1.txt": (None, 5, {("msix", "0000:c8:00.0"): 5}),
    "martins3_int-vfio_fragment2.txt": (None, 9, {("msix", "0000:03:00.0"): 9}),
    "martins3_trace-tools-irq_32cpu.txt": (32, 83, {}),
    "sharathdm-vfio_nvme_readme_vfio-msix_20cpu.txt": (20, 14, {("msix", "0000:03:00.0"): 1}),
    "sysstat-tests-root1_9cpu.txt": (9, 43, {}),
    "sysstat-tests-root7_10cpu.txt": (10, 43, {}),
}


def test_every_capture_is_listed():
    on_disk = {p.name for p in CORPUS.glob("*.txt")}
    assert on_disk == set(CAPTURES), "a capture was added or removed; update CAPTURES"


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_capture_parses_completely(name):
    cpus, nlines, vfio = CAPTURES[name]
    result = parse_interrupts(load(name))
    assert result.cpus == cpus
    assert result.skipped == ()
    assert len(result.lines) == nlines
    # Every numbered row of a real capture has a chip.
    for line in result.lines:
        if line.number is not None:
            assert line.chip, line
    # No row of a complete capture is flagged truncated.
    assert [line.irq for line in result.lines if line.truncated] == []
    found = Counter((v.mode, v.bdf) for line in result.lines for v in line.vfio)
    assert dict(found) == vfio


@pytest.mark.parametrize("name", sorted(n for n, v in CAPTURES.items() if v[0] is not None))
def test_count_columns_match_header(name):
    result = parse_interrupts(load(name))
    for line in result.lines:
        expected = 1 if line.irq in ("ERR", "MIS") else result.cpus
        assert len(line.counts) == expected, line


def test_kernel_measure_rows_are_complete():
    # PROVENANCE.md calls this capture "cut off after 14 columns", but the
    # stored file has all 16 count columns on every row and full chip/handler
    # text; the parser must not invent truncation.
    result = parse_interrupts(load("kernel-measure_16cpu_truncated-columns.txt"))
    rows = result.by_irq()
    assert rows["8"].counts == (0,) * 16
    assert (rows["8"].chip, rows["8"].hwirq, rows["8"].flow, rows["8"].handlers) == (
        "IR-IO-APIC", "8", "edge", ("rtc0",))
    assert rows["PIN"].counts[0] == 52213


def test_martins3_vfio_msix_lines():
    result = parse_interrupts(load("martins3_int-procfs_vfio-msix_32cpu.txt"))
    pairs = result.vfio_lines("0000:03:00.0")
    assert len(pairs) == 9
    assert [v.index for _, v in pairs] == list(range(9))
    assert [line.irq for line, _ in pairs] == [str(n) for n in (127, *range(130, 138))]
    for line, handler in pairs:
        assert handler == VfioHandler("msix", handler.index, "0000:03:00.0")
        assert line.chip == "IR-PCI-MSIX-0000:03:00.0"
        assert line.hwirq == str(handler.index)
        assert line.flow == "edge"
        assert line.remapped
        assert len(line.counts) == 32
    irq130 = result.by_irq()["130"]
    assert irq130.counts[30] == 4649920 and irq130.total == 4649920
    # The same BDF in upper case finds the same lines.
    assert len(result.vfio_lines("0000:03:00.0".upper())) == 9
    # Host nvme queues on other devices are not vfio.
    assert result.vfio_lines("0000:06:00.0") == ()
    assert result.by_irq()["128"].handlers == ("nvme2q0",)


def test_iommu_off_companion_has_no_vfio_lines():
    result = parse_interrupts(load("martins3_int-procfs-iommu-off_32cpu.txt"))
    assert result.vfio_lines("0000:03:00.0") == ()
    chips = {line.chip for line in result.lines if line.chip}
    assert any(c.startswith("IR-PCI-MSIX-0000:03:00.0") for c in chips)


def test_forum_post_vfio_msi_on_irq_45():
    result = parse_interrupts(load("forum-post_2015-10-24_vfio-msi_8cpu.txt"))
    irq45 = result.by_irq()["45"]
    assert irq45.handlers == ("vfio-msi[0](0000:07:00.0)",)
    assert irq45.vfio == (VfioHandler("msi", 0, "0000:07:00.0"),)
    assert irq45.chip == "IR-PCI-MSI" and irq45.flow == "edge" and irq45.hwirq is None
    assert irq45.counts == (2316334, 0, 0, 0, 0, 0, 0, 0)
    [(line, handler)] = result.vfio_lines("0000:07:00.0")
    assert line is irq45 and handler.index == 0
    # The host nvidia driver sits on the IRQ just before it.
    assert result.by_irq()["44"].handlers == ("nvidia",)


def test_old_format_chip_with_glued_flow():
    result = parse_interrupts(load("forum-post_2015-10-24_vfio-msi_8cpu.txt"))
    rows = result.by_irq()
    # Pre-3.11 "IR-IO-APIC-edge": flow glued to the chip, no hwirq.
    assert (rows["0"].chip, rows["0"].hwirq, rows["0"].flow, rows["0"].handlers) == (
        "IR-IO-APIC", None, "edge", ("timer",))
    assert (rows["9"].chip, rows["9"].flow) == ("IR-IO-APIC", "fasteoi")
    # "DMAR_MSI-edge dmar0": chip without IR-
    assert (rows["24"].chip, rows["24"].flow, rows["24"].handlers) == ("DMAR_MSI", "edge", ("dmar0",))
    assert not rows["24"].remapped
    # The same capture also has new-style rows ("IR-IO-APIC   16-fasteoi").
    assert (rows["16"].chip, rows["16"].hwirq, rows["16"].flow, rows["16"].handlers) == (
        "IR-IO-APIC", "16", "fasteoi", ("ehci_hcd:usb5",))
    # A row with a chip and no action at all.
    assert (rows["7"].chip, rows["7"].handlers, rows["7"].truncated) == ("IR-IO-APIC", (), False)


def test_new_format_io_apic_and_per_device_msix():
    result = parse_interrupts(load("cryp70n1cz-syslogs_4cpu.txt"))
    rows = result.by_irq()
    assert (rows["9"].chip, rows["9"].hwirq, rows["9"].flow, rows["9"].handlers) == (
        "IR-IO-APIC", "9", "fasteoi", ("acpi",))
    assert (rows["129"].chip, rows["129"].hwirq, rows["129"].flow) == (
        "IR-PCI-MSIX-0000:00:14.3", "0", "edge")
    assert rows["129"].handlers == ("iwlwifi:default_queue",)
    assert rows["123"].chip == "IR-PCI-MSI-0000:00:02.0"
    assert (rows["120"].chip, rows["120"].remapped) == ("DMAR-MSI", False)
    # "intel-gpio   87  rt5682s": an irq domain with no flow name.
    assert (rows["135"].chip, rows["135"].hwirq, rows["135"].flow, rows["135"].handlers) == (
        "intel-gpio", "87", None, ("rt5682s",))
    assert not rows["135"].truncated


def test_shared_lines_split_on_comma_space():
    rows = parse_interrupts(load("cryp70n1cz-syslogs_4cpu.txt")).by_irq()
    # Handler names may contain spaces ("PCIe PME"); only ", " separates them.
    assert rows["122"].handlers == ("PCIe PME", "aerdrv", "pciehp")
    assert rows["37"].handlers == ("idma64.0", "i2c_designware.0")
    rows = parse_interrupts(load("kernel-measure_16cpu_truncated-columns.txt")).by_irq()
    assert rows["27"].handlers == ("idma64.0", "i2c_designware.0")


def test_shared_line_with_vfio_intx_inline():
    text = textwrap.dedent("""\
                   CPU0       CPU1
          16:        120          7  IR-IO-APIC   16-fasteoi   ehci_hcd:usb1, vfio-intx(0000:01:00.0)
        """)
    [line] = parse_interrupts(text).lines
    assert line.handlers == ("ehci_hcd:usb1", "vfio-intx(0000:01:00.0)")
    assert line.vfio == (VfioHandler("intx", None, "0000:01:00.0"),)
    assert not line.truncated


def test_ir_pci_msi_with_large_hwirq():
    result = parse_interrupts(load("sharathdm-vfio_nvme_readme_vfio-msix_20cpu.txt"))
    line = result.by_irq()["128"]
    assert (line.chip, line.hwirq, line.flow) == ("IR-PCI-MSI", "1572865", "edge")
    assert line.vfio == (VfioHandler("msix", 1, "0000:03:00.0"),)
    assert line.counts[1] == 1 and len(line.counts) == 20
    assert line.remapped


def test_sharathdm_blank_lines_between_rows():
    text = load("sharathdm-vfio_nvme_readme_vfio-msix_20cpu.txt")
    assert "\n\n" in text  # the published form, one empty line after each row
    result = parse_interrupts(text)
    assert result.cpus == 20 and result.skipped == ()
    assert [line.irq for line in result.lines][:3] == ["0", "8", "9"]


def test_headerless_128_cpu_fragments():
    result = parse_interrupts(load("martins3_int-vfio_fragment1.txt"))
    assert result.cpus is None
    assert [line.irq for line in result.lines] == ["100", "101", "102", "103", "104"]
    for index, line in enumerate(result.lines):
        assert len(line.counts) == 128
        assert not line.truncated
        assert line.chip == "IR-PCI-MSIX-0000:c8:00.0"
        assert line.vfio == (VfioHandler("msix", index, "0000:c8:00.0"),)
    [line] = parse_interrupts(load("martins3_int-posted_fragment.txt")).lines
    assert line.irq == "663" and len(line.counts) == 128
    assert line.vfio == (VfioHandler("msix", 0, "0000:17:00.2"),)
    # A 32-CPU fragment with non-contiguous IRQs.
    result = parse_interrupts(load("martins3_int-vfio_fragment2.txt"))
    assert {len(line.counts) for line in result.lines} == {32}
    assert [line.irq for line in result.lines][:3] == ["137", "138", "140"]


def test_err_and_mis_single_count_not_truncated():
    result = parse_interrupts(load("forum-post_2015-10-24_vfio-msi_8cpu.txt"))
    rows = result.by_irq()
    assert rows["ERR"].counts == (37,) and not rows["ERR"].truncated
    assert rows["MIS"].counts == (0,) and not rows["MIS"].truncated
    assert rows["ERR"].handlers == () and rows["ERR"].chip is None


def test_nmi_and_loc_rows():
    rows = parse_interrupts(load("forum-post_2015-10-24_vfio-msi_8cpu.txt")).by_irq()
    nmi, loc = rows["NMI"], rows["LOC"]
    assert nmi.number is None and nmi.chip is None
    assert nmi.handlers == ("Non-maskable interrupts",)
    assert nmi.counts == (967, 571, 539, 552, 274, 495, 268, 323)
    assert loc.handlers == ("Local timer interrupts",)
    assert loc.total == sum((16507076, 13752938, 13399083, 13878039,
                             5006025, 5282888, 5107556, 5069468))
    assert not nmi.truncated and not loc.truncated


def test_row_cut_mid_word_is_truncated():
    text = textwrap.dedent("""\
                    CPU0       CPU1
           8:          0          0  IR-IO-APIC    8-e
           9:          0          0  IR-IO-APIC    9-fasteoi   acpi
        """)
    rows = parse_interrupts(text).by_irq()
    assert rows["8"].truncated
    assert rows["8"].chip == "IR-IO-APIC" and rows["8"].flow is None
    assert not rows["9"].truncated


def test_rows_with_fewer_counts_than_cpus_are_truncated():
    text = textwrap.dedent("""\
                    CPU0       CPU1       CPU2       CPU3
           0:          9          0          0          0  IR-IO-APIC    2-edge      timer
           8:          0          0
         NMI:         12         13
         ERR:          0
        """)
    result = parse_interrupts(text)
    rows = result.by_irq()
    assert not rows["0"].truncated
    assert rows["8"].truncated and rows["8"].counts == (0, 0) and rows["8"].chip is None
    assert rows["NMI"].truncated
    assert not rows["ERR"].truncated
    # Cut rows stay in `lines` and are counted among the rows not read whole,
    # as the daemon's sample_table counts them.
    assert [(s.irq, s.reason, s.cut) for s in result.skipped] == [
        ("8", "row cut short", True), ("NMI", "row cut short", True)]
    assert [str(s) for s in result.skipped] == ["line 3: IRQ 8: row cut short",
                                                "line 4: IRQ NMI: row cut short"]


def test_row_cut_inside_counts_keeps_the_counts():
    line = parse_interrupt_row("  30:    1154683        132          0       18", 8)
    assert line.counts == (1154683, 132, 0, 18)
    assert line.truncated and line.chip is None and line.handlers == ()


def test_more_count_columns_than_cpus_go_to_the_description():
    # cpus limits the count columns: a numeric handler name stays a handler.
    line = parse_interrupt_row("  5:  1  2  IO-APIC   5-edge      1234", 2)
    assert line.counts == (1, 2)
    assert line.handlers == ("1234",)


@pytest.mark.parametrize("garbage", [
    "this is not /proc/interrupts",
    "cat /proc/interrupts",
    "$ sudo cat /proc/interrupts | grep vfio",
    ": 1 2 3",
    "a b: 1 2",
    "----",
    "\x00\x01\x02",
])
def test_garbage_lines_are_skipped_never_raised(garbage):
    text = "           CPU0       CPU1\n" + garbage + "\n  1:  5  6  IR-IO-APIC    1-edge      i8042\n"
    result = parse_interrupts(text)
    assert result.cpus == 2
    assert len(result.skipped) == 1
    assert str(result.skipped[0]).startswith("line 2: not an interrupt row")
    assert [line.irq for line in result.lines] == ["1"]


def test_empty_and_header_only_input():
    assert parse_interrupts("").lines == () and parse_interrupts("").cpus is None
    result = parse_interrupts("           CPU0       CPU1       CPU2\n")
    assert result.cpus == 3 and result.lines == () and result.skipped == ()


def test_header_after_rows_is_not_taken_as_header():
    text = "  1:  5  IR-IO-APIC    1-edge      i8042\n  CPU0 CPU1\n"
    result = parse_interrupts(text)
    assert result.cpus is None
    assert len(result.lines) == 1 and len(result.skipped) == 1


def test_crlf_line_endings():
    text = load("coreos-sosreport_2cpu.txt").replace("\n", "\r\n")
    result = parse_interrupts(text)
    assert result.cpus == 2 and result.skipped == () and len(result.lines) == 24
    assert result.by_irq()["8"].handlers == ("rtc0",)


@pytest.mark.parametrize("chip, expected", [
    ("IR-PCI-MSI", True),
    ("IR-IO-APIC", True),
    ("IR-PCI-MSIX-0000:03:00.0", True),
    ("PCI-MSI", False),
    ("IO-APIC", False),
    ("PCI-MSIX-0000:00:09.0", False),
    ("DMAR-MSI", False),
    (None, False),
])
def test_remapped_property(chip, expected):
    line = IrqLine(irq="40", counts=(1,), chip=chip, hwirq=None, flow="edge",
                   handlers=(), truncated=False)
    assert line.remapped is expected


@pytest.mark.parametrize("name, remapped", [
    ("sysstat-tests-root1_9cpu.txt", False),
    ("martins3_trace-tools-irq_32cpu.txt", False),
    ("coreos-sosreport_2cpu.txt", False),
    ("forum-post_2015-10-24_vfio-msi_8cpu.txt", True),
    ("intersched_8cpu.txt", True),
])
def test_remapped_across_captures(name, remapped):
    result = parse_interrupts(load(name))
    relevant = [line for line in result.lines if line.chip and "DMAR" not in line.chip
                and ("MSI" in line.chip or "APIC" in line.chip)]
    assert relevant, "capture has IO-APIC or MSI rows"
    assert {line.remapped for line in relevant} == {remapped}


@pytest.mark.parametrize("name, expected", [
    ("vfio-intx(0000:01:00.0)", VfioHandler("intx", None, "0000:01:00.0")),
    ("vfio-msi[0](0000:07:00.0)", VfioHandler("msi", 0, "0000:07:00.0")),
    ("vfio-msix[12](0000:C8:00.7)", VfioHandler("msix", 12, "0000:c8:00.7")),
    ("vfio-msix[0](0001:03:1f.0)", VfioHandler("msix", 0, "0001:03:1f.0")),
])
def test_vfio_handler_recognized(name, expected):
    assert parse_vfio_handler(name) == expected


@pytest.mark.parametrize("name", [
    "vfio-msix[0](0000:03:00.8)",  # function > 7
    "vfio-msix[0](03:00.0)",  # no domain
    "vfio-msix[](0000:03:00.0)",
    "vfio-msi[0](0000:07:00.0) ",
    "vfio-err(0000:07:00.0)",
    "vfio-msix[0](0000:03:00.0)x",
    "nvme0q1",
    "vfio",
    "",
])
def test_vfio_handler_rejected(name):
    assert parse_vfio_handler(name) is None


def test_interrupt_row_rejects_non_rows():
    assert parse_interrupt_row("no colon here", 2) is None
    assert parse_interrupt_row(": 1 2", 2) is None
    assert parse_interrupt_row("two words: 1 2", 2) is None


def test_number_property():
    assert parse_interrupt_row("  45:  1  IR-PCI-MSI-edge  x", 1).number == 45
    assert parse_interrupt_row(" NMI:  1  Non-maskable interrupts", 1).number is None


# --- known bugs -----------------------------------------------------------

def test_unicode_digit_does_not_raise():
    result = parse_interrupts("           CPU0\n  0: \u00b2 IO-APIC   2-edge      timer\n")
    assert len(result.lines) + len(result.skipped) == 1


def test_overlong_count_does_not_raise():
    result = parse_interrupts("  0: " + "9" * 5000 + " IO-APIC   2-edge      timer\n")
    assert len(result.lines) + sum(1 for s in result.skipped if not s.cut) == 1
    assert len(result.skipped) == 1  # and never taken as read whole


def test_arm_gic_row_not_truncated():
    text = textwrap.dedent("""\
                   CPU0       CPU1       CPU2       CPU3
         11:       5820       5482      14979       6981     GICv2  30 Level     arch_timer
         14:          0          0          0          0     GICv2  67 Level     zynqmp-ipi
        """)
    for line in parse_interrupts(text).lines:
        assert line.chip == "GICv2"
        assert not line.truncated, line


# --- rows that cannot be read whole --------------------------------------------

def test_a_garbled_count_is_skipped_with_its_label_and_text():
    text = textwrap.dedent("""\
                   CPU0       CPU1       CPU2
         16:         29          0          9  IR-IO-APIC  16-fasteoi   ehci_hcd:usb5
         28:    44x8207          0          0  IR-IO-APIC   4-fasteoi   vfio-intx(0000:05:00.1)
         30:          1          2        3x3  IR-PCI-MSI-edge      xhci_hcd
        """)
    result = parse_interrupts(text)
    assert [line.irq for line in result.lines] == ["16"]
    assert [str(s) for s in result.skipped] == [
        "line 3: IRQ 28: count column 1 is '44x8207', not a number",
        "line 4: IRQ 30: count column 3 is '3x3', not a number"]
    assert result.skipped[0].names("0000:05:00.1") and not result.skipped[0].cut
    assert result.vfio_lines("0000:05:00.1") == ()


def test_more_count_columns_than_the_header_is_skipped():
    text = textwrap.dedent("""\
                   CPU0       CPU1
         28:     448207          0          0  IR-IO-APIC   4-fasteoi   vfio-intx(0000:05:00.1)
        NMI:          1          2          3   Non-maskable interrupts
        ERR:          0
        """)
    result = parse_interrupts(text)
    assert result.lines == (parse_interrupt_row("ERR:          0", 2),)
    assert [(s.irq, s.reason) for s in result.skipped] == [
        ("28", "more count columns than the header's 2 CPUs"),
        ("NMI", "more count columns than the header's 2 CPUs")]


def test_text_ending_inside_a_row_marks_it_cut():
    # show_interrupts ends every row with "\n": text without one was cut.
    whole = "           CPU0\n  28:     448207  IR-IO-APIC   4-fasteoi   vfio-intx(0000:05:00.1)\n"
    assert parse_interrupts(whole).skipped == ()
    cut = whole[:-len("0000:05:00.1)\n")]
    result = parse_interrupts(cut)
    (row,) = result.skipped
    assert (row.irq, row.reason, row.cut, row.anonymous) == ("28", "row cut short", True, False)
    assert result.by_irq()["28"].truncated
    (row,) = parse_interrupts(whole[:40]).skipped
    assert row.anonymous  # cut before its actions: it may be anyone's


def test_sample_table_counts_the_rows_parse_interrupts_counts():
    text = textwrap.dedent("""\
                   CPU0       CPU1
         16:         29          0  IR-IO-APIC  16-fasteoi   ehci_hcd:usb5
         28:    44x8207          0  IR-IO-APIC   4-fasteoi   vfio-intx(0000:05:00.1)
         45:          1          2          3  IR-PCI-MSI-edge      vfio-msi[0](0000:05:00.0)
        """)
    table, skipped = sample_table(text, frozenset({"16"}))
    assert skipped == len(parse_interrupts(text).skipped) == 2
    assert [s.irq for s in table.skipped] == ["28", "45"]
