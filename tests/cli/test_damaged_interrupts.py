"""A damaged /proc/interrupts is said, never read as an all-clear.

The demo host (examples/demo-host) copied, its /proc/interrupts emptied or
edited one row at a time, and `advise` run over libvirt's test driver as a
user runs it. The controls are the demo as shipped: win11's audio function
on vfio-intx (IRQ 28, VA1001), oldbox's SB Live! (PCI PM 1.0: likely no
INTx masking) on sysfs irq 16, which ehci_hcd:usb5 holds (VA2003, "the start
fails" if it lacks masking).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples/demo-host"
CAPTURES = REPO / "tests/data/corpus/proc-interrupts"
AUDIO, SBLIVE = "0000:05:00.1", "0000:08:00.0"


@pytest.fixture
def demo(tmp_path) -> Path:
    shutil.copytree(DEMO / "root", tmp_path / "root", symlinks=True)
    shutil.copy(DEMO / "node.xml", tmp_path / "node.xml")
    return tmp_path


def advise(tree: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vfio_advisor", "advise", "--connect", f"test://{tree / 'node.xml'}",
         "--host-root", str(tree / "root"), "--config", "/dev/null", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(os.environ, NO_COLOR="1"))


def advise_json(tree: Path, *domains: str) -> tuple[int, dict]:
    out = advise(tree, "--format", "json", *domains)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


def interrupts(tree: Path) -> Path:
    return tree / "root/proc/interrupts"


def edit_row(tree: Path, irq: str, old: str, new: str) -> None:
    """Replace `old` by `new` in the row labelled `irq`, and nowhere else."""
    rows = interrupts(tree).read_text().splitlines(keepends=True)
    (at,) = [i for i, row in enumerate(rows) if row.partition(":")[0].strip() == irq]
    assert old in rows[at], rows[at]
    rows[at] = rows[at].replace(old, new, 1)
    interrupts(tree).write_text("".join(rows))


def domain(doc: dict, name: str) -> dict:
    (dom,) = [d for d in doc["domains"] if d["name"] == name]
    return dom


def rules(dom: dict) -> list[str]:
    return sorted([f["rule"] for f in dom["findings"]] +
                  [f["rule"] for dev in dom["devices"] for f in dev["findings"]])


def device(dom: dict, bdf: str) -> dict:
    (dev,) = [d for d in dom["devices"] if d["host_address"] == bdf]
    return dev


def va8002_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if "info    VA8002 " in line]


def test_control_the_demo_as_shipped(demo):
    code, doc = advise_json(demo)
    assert code == 1
    assert doc["host"]["interrupts_problem"] is None
    assert "VA1001" in rules(domain(doc, "win11"))
    assert "VA2003" in rules(domain(doc, "oldbox"))
    assert not [r for d in doc["domains"] for r in rules(d) if r == "VA8002"]


def test_empty_file_is_no_table(demo):
    """Emptied (`: > proc/interrupts`): as unreadable for the rules (no
    mode, no sharers, VA8002), but a damaged input for the exit status."""
    interrupts(demo).write_text("")
    code, doc = advise_json(demo)
    assert code == 2
    assert doc["host"]["interrupts_problem"] == "proc/interrupts: empty: no rows"
    for name in ("win11", "oldbox", "nvme-linux"):
        dom = domain(doc, name)
        assert [f["rule"] for f in dom["findings"] if f["rule"] == "VA8002"] == ["VA8002"], name
        assert {d["host_interrupts"]["mode"] for d in dom["devices"]} == {"unknown"}, name
    assert "VA1001" not in rules(domain(doc, "win11"))
    assert "VA2003" not in rules(domain(doc, "oldbox"))
    out = advise(demo, "win11")
    assert out.returncode == 2, out.stdout
    assert va8002_lines(out.stdout) == [
        "info    VA8002 Host interrupts could not be read (proc/interrupts: empty: no rows); "
        "interrupt mode and line sharing were not checked."]


def test_header_only_is_no_table_either(demo):
    header = interrupts(demo).read_text().splitlines(keepends=True)[0]
    interrupts(demo).write_text(header)
    code, doc = advise_json(demo, "win11")
    assert code == 2
    assert doc["host"]["interrupts_problem"] == "proc/interrupts: empty: no rows"


def test_garbled_count_on_the_devices_own_row(demo):
    """One count of win11's vfio-intx row (IRQ 28) garbled: the audio is
    neither on INTx (VA1001) nor idle; the GPU's MSI row was read whole."""
    edit_row(demo, "28", " 448207 ", " 44x8207 ")
    code, doc = advise_json(demo, "win11")
    assert code == 2
    dom = domain(doc, "win11")
    assert device(dom, AUDIO)["host_interrupts"]["mode"] == "unknown"
    assert device(dom, "0000:05:00.0")["host_interrupts"]["mode"] == "msi"
    assert rules(dom) == ["VA8002"]
    (note,) = dom["findings"]
    assert note["subject"] is None
    assert note["message"] == (
        "1 /proc/interrupts row could not be read whole (line 12: IRQ 28: count column 1 is "
        "'44x8207', not a number); interrupt mode and line sharing of 0000:05:00.1 were not "
        "checked: its rows may be among them.")


def test_garbled_row_of_another_device_leaves_the_verdicts(demo):
    """The same row, for a domain whose devices' rows were read whole:
    nvme-linux keeps its MSI-X verdict and its exit status (0), with one
    line saying what was skipped."""
    edit_row(demo, "28", " 448207 ", " 44x8207 ")
    out = advise(demo, "nvme-linux")
    assert out.returncode == 0, out.stdout
    assert "on MSI-X (5 vectors)" in out.stdout
    assert va8002_lines(out.stdout) == [
        "info    VA8002 1 /proc/interrupts row could not be read whole (line 12: IRQ 28: count "
        "column 1 is '44x8207', not a number); the rows of this domain's devices were read "
        "whole, and their checks stand."]


def test_extra_count_column_on_the_devices_own_row(demo):
    edit_row(demo, "28", " 448207 ", " 448207          0 ")
    code, doc = advise_json(demo, "win11")
    assert code == 2
    dom = domain(doc, "win11")
    assert device(dom, AUDIO)["host_interrupts"]["mode"] == "unknown"
    assert rules(dom) == ["VA8002"]
    assert "IRQ 28: more count columns than the header's 8 CPUs" in dom["findings"][0]["message"]


def test_extra_count_column_on_the_line_a_device_needs(demo):
    """IRQ 16 (ehci_hcd:usb5) with one column too many: who holds the SB
    Live!'s line is unknown, so no "the start fails" (VA2003) on a
    guess, and no "line free" either: VA8002 names the device, exit 2."""
    edit_row(demo, "16", "IR-IO-APIC", "0  IR-IO-APIC")
    code, doc = advise_json(demo, "oldbox")
    assert code == 2
    dom = domain(doc, "oldbox")
    assert device(dom, SBLIVE)["host_interrupts"]["mode"] == "unknown"
    assert "VA2003" not in rules(dom)
    (note,) = [f for f in dom["findings"] if f["rule"] == "VA8002"]
    assert "IRQ 16: more count columns than the header's 8 CPUs" in note["message"]
    assert SBLIVE in note["message"].split("; ", 1)[1]


def test_file_cut_inside_the_devices_row(demo):
    """The text ends inside IRQ 28's handler name (a copy cut short): the
    row is not taken as read whole."""
    text = interrupts(demo).read_text()
    interrupts(demo).write_text(text[:text.index("vfio-intx(0000:05:00.1)") + len("vfio-intx(0000:05")])
    code, doc = advise_json(demo, "win11")
    assert code == 2
    dom = domain(doc, "win11")
    assert device(dom, AUDIO)["host_interrupts"]["mode"] == "unknown"
    assert "VA1001" not in rules(dom)
    assert "IRQ 28: row cut short" in [f for f in dom["findings"] if f["rule"] == "VA8002"][0]["message"]


# --- the corpus capture named "truncated-columns" -----------------------------

CAPTURE = CAPTURES / "kernel-measure_16cpu_truncated-columns.txt"


def test_corpus_capture_read_whole_gives_no_note(demo):
    """The capture as stored is whole (16 counts on every row for a 16-CPU
    header, every row ending in a newline), whatever PROVENANCE.md says of
    it; on its own it must not raise a note. It holds no vfio row, so the
    demo's devices are idle there: the verdicts are the capture's."""
    shutil.copy(CAPTURE, interrupts(demo))
    code, doc = advise_json(demo, "win11")
    assert code == 0
    dom = domain(doc, "win11")
    assert "VA8002" not in rules(dom)
    assert {d["host_interrupts"]["mode"] for d in dom["devices"]} == {"none"}


def test_corpus_capture_cut_after_14_columns(demo):
    """The capture cut as PROVENANCE.md describes it (every row after 14 of
    its 16 count columns, a terminal-width copy): no row names its handlers,
    so no device without a readable vfio row may be called idle."""
    rows = CAPTURE.read_text().splitlines()
    cut = [rows[0]] + [row[:row.index(":") + 1 + 11 * 14] for row in rows[1:]]
    interrupts(demo).write_text("\n".join(cut) + "\n")
    code, doc = advise_json(demo, "win11")
    assert code == 2
    dom = domain(doc, "win11")
    assert {d["host_interrupts"]["mode"] for d in dom["devices"]} == {"unknown"}
    (note,) = [f for f in dom["findings"] if f["rule"] == "VA8002"]
    assert note["message"].startswith("44 /proc/interrupts rows could not be read whole "
                                      "(line 2: IRQ 8: row cut short; ")


def test_a_text_ending_without_its_last_newline_costs_no_device_its_checks(demo):
    """Only the final newline gone (a paste, a recording cut at the last
    byte): the row it ends in is the architecture's MIS, read whole, and no
    device's. Every finding stands and the status is the control's."""
    path = interrupts(demo)
    text = path.read_text()
    assert text.endswith("\n") and text.splitlines()[-1].lstrip().startswith("MIS:")
    path.write_text(text.rstrip("\n"))
    code, doc = advise_json(demo)
    assert code == 1, doc  # warnings and errors, as the demo as shipped
    assert "VA2003" in rules(domain(doc, "oldbox"))
    assert "VA1001" in rules(domain(doc, "win11"))
    assert device(domain(doc, "win11"), AUDIO)["host_interrupts"]["mode"] == "intx"


def test_fix_claims_no_all_clear_over_a_damaged_file_either(demo):
    """fix runs advise's analysis: over an emptied /proc/interrupts its
    plans are printed, but "every finding got a verified change" would
    rest on checks that did not run, so it exits 2 as advise does."""
    control = subprocess.run(
        [sys.executable, "-m", "vfio_advisor", "fix", "--connect", f"test://{demo / 'node.xml'}",
         "--host-root", str(demo / "root"), "--config", "/dev/null", "nvme-linux"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(os.environ, NO_COLOR="1"))
    assert control.returncode == 0, (control.stdout, control.stderr)
    interrupts(demo).write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "vfio_advisor", "fix", "--connect", f"test://{demo / 'node.xml'}",
         "--host-root", str(demo / "root"), "--config", "/dev/null", "nvme-linux"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(os.environ, NO_COLOR="1"))
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.stdout, out.stderr)
