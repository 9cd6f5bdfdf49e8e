"""Effective state, not the command line, on the lab's real
kernels: interrupt remapping as the kernel shows it (IR- chips, sysfs) wins
over what the command line asked for, and VA3002 quotes that evidence.

- intremap-off: intremap=off and allow_unsafe_interrupts=1 (dmesg has no
  "DMAR-IR: Enabled IRQ remapping"): remapping off, VA3002 fires; with the
  parameter at N instead (a copy), VA3008 says the start fails;
- modes: the same devices, remapping on: silent, with the parameter set or not;
- modes with intel_iommu=off or intremap=off written into its command line:
  the IR- chips of the running kernel still show remapping on. intel_iommu=off
  does not turn Intel IR off (drivers/iommu/intel/irq_remapping.c, 6.1,
  intel_prepare_irq_remapping does not read dmar_disabled), and a command
  line that disagrees with the chips is not what the kernel did.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.rules.examples import CAPTURES, EXAMPLES, LAB_XML, lab
from vfio_advisor.engine import gather_host, run_rules
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.interrupts import parse_interrupts
from vfio_advisor.facts.kernel import KernelFacts, parse_cmdline
from vfio_advisor.facts.model import HostFacts
from vfio_advisor.facts.platform import iommu_state


def _va3002(facts):
    return [f for f in run_rules(facts) if f.rule_id == "VA3002"]


def _rule(facts, rule_id):
    return [f for f in run_rules(facts) if f.rule_id == rule_id]


def test_intremap_off_capture_is_off_and_va3002_quotes_the_evidence(tmp_path):
    facts = lab(CAPTURES / "intremap-off", LAB_XML / "modes.xml")
    assert facts.host.interrupt_remapping is False
    (f,) = _va3002(facts)
    assert "without the IR- prefix" in f.message
    assert "intremap=off" in f.message
    assert "allow_unsafe_interrupts=1" in f.message
    # The parameter is what lets these groups attach: never told to clear it
    # without turning remapping on (the start would fail, VA3008).
    assert "allow_unsafe_interrupts=0" not in f.remedy
    assert f.remedy.index("Turn interrupt remapping on") < f.remedy.index("drop it")
    assert _rule(facts, "VA3008") == []


def test_remapping_off_with_the_parameter_at_n_fails_the_start(tmp_path):
    facts = EXAMPLES["intremap-off-unsafe-n"](tmp_path)
    assert facts.host.interrupt_remapping is False
    assert facts.host.iommu.allow_unsafe_interrupts is False
    assert _va3002(facts) == []  # nothing runs, so nothing runs unisolated
    (f,) = _rule(facts, "VA3008")
    assert str(f.severity) == "error"
    assert "without the IR- prefix" in f.message and "intremap=off" in f.message
    group = facts.vfio.group_of(facts.devices[0].address).number
    assert (f"failed to setup container for group {group}: Failed to set iommu for container: "
            "Operation not permitted") in f.message
    assert "No interrupt remapping support." in f.message
    assert "allow_unsafe_interrupts=0" not in f.remedy
    assert "Turn interrupt remapping on" in f.remedy
    assert "options vfio_iommu_type1 allow_unsafe_interrupts=1" in f.remedy
    assert "vfio_iommu_type1.allow_unsafe_interrupts=1" in f.remedy
    assert "trust" in f.remedy


def test_remapping_off_with_the_module_not_loaded_is_hedged(tmp_path):
    facts = EXAMPLES["intremap-off-type1-not-loaded"](tmp_path)
    assert facts.host.iommu.allow_unsafe_interrupts is None
    assert _rule(facts, "VA3008") == []  # the error only on the value the kernel holds
    (f,) = _va3002(facts)
    assert "not loaded yet" in f.message
    assert "Unless it is loaded with allow_unsafe_interrupts=1, the start of lab-modes will fail" \
        in f.message
    assert "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts" in f.remedy


def test_the_parameter_changes_nothing_with_remapping_on(tmp_path):
    facts = EXAMPLES["modes-unsafe-y"](tmp_path)
    assert facts.host.interrupt_remapping is True
    assert facts.host.iommu.allow_unsafe_interrupts is True
    assert _va3002(facts) == [] and _rule(facts, "VA3008") == []


def test_modes_capture_is_on_and_silent():
    facts = lab(CAPTURES / "modes", LAB_XML / "modes.xml")
    assert facts.host.interrupt_remapping is True
    assert _va3002(facts) == []


@pytest.mark.parametrize("cmdline", ["intel_iommu=off", "intremap=off", "iommu=off"])
def test_the_kernels_chips_win_over_the_command_line(tmp_path, cmdline):
    root = tmp_path / "root"
    shutil.copytree(CAPTURES / "modes", root, symlinks=True)
    (root / "proc/cmdline").write_text(f"console=ttyS0 quiet {cmdline}\n")
    facts = lab(root, LAB_XML / "modes.xml")
    assert facts.host.interrupt_remapping is True
    assert facts.host.iommu.ir_evidence[0].startswith("/proc/interrupts: IR- chips")
    assert _va3002(facts) == []  # it must not say "the command line turns it off"


def test_the_command_line_decides_only_without_the_kernels_state(tmp_path):
    # No MSI/IO-APIC chip to read: then intremap=off on the command line is
    # the best evidence, and VA3002 names it.
    root = tmp_path / "root"
    shutil.copytree(CAPTURES / "intremap-off", root, symlinks=True)
    text = (root / "proc/interrupts").read_text().splitlines()
    (root / "proc/interrupts").write_text("\n".join(
        line for line in text if "MSI" not in line and "APIC" not in line) + "\n")
    facts = lab(root, LAB_XML / "modes.xml")
    assert facts.host.interrupt_remapping is False
    (f,) = _va3002(facts)
    assert "intremap=off or nointremap on the command line" in f.message
    assert "IR- prefix" not in f.message


def test_intel_iommu_off_alone_is_not_remapping_off(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(CAPTURES / "intremap-off", root, symlinks=True)
    text = (root / "proc/interrupts").read_text().splitlines()
    (root / "proc/interrupts").write_text("\n".join(
        line for line in text if "MSI" not in line and "APIC" not in line) + "\n")
    (root / "proc/cmdline").write_text("console=ttyS0 quiet intel_iommu=off\n")
    facts = lab(root, LAB_XML / "modes.xml")
    assert facts.host.interrupt_remapping is None  # unknown, not off
    assert all("interrupt remapping is off" not in f.message for f in _va3002(facts))
    # allow_unsafe_interrupts=1 stays set in this copy: a hedged warning
    (f,) = _va3002(facts)
    assert "could not be read" in f.message


def test_host_facts_never_guess_remapping_from_the_command_line():
    # HostFacts without an iommu state (built by hand, not by gather_host)
    # used to fall back on kernel.py's command-line guess, which called
    # intel_iommu=off "remapping off" and let it override the chips. Only
    # iommu_state may answer; without it the answer is "unknown".
    kernel = KernelFacts(cmdline=parse_cmdline("quiet intel_iommu=off"), vfio_pci_params=None,
                         allow_unsafe_interrupts=None, iommu_groups=0, unreadable=())
    ir_on = parse_interrupts((CAPTURES / "modes/proc/interrupts").read_text())
    for interrupts in (None, ir_on):
        host = HostFacts(kernel=kernel, interrupts=interrupts, interrupts_problem=None,
                         later=None, sample_seconds=None)
        assert host.interrupt_remapping is None


def test_host_facts_carry_iommu_states_verdict_for_every_lab_capture():
    for capture in sorted(p for p in CAPTURES.iterdir() if (p / "proc/interrupts").exists()):
        host = gather_host(HostRoot(capture))
        expected = iommu_state(HostRoot(capture)).interrupt_remapping
        assert host.interrupt_remapping is expected, capture.name
