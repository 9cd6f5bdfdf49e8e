"""Posted interrupts and the effective IOMMU / interrupt-remapping state.

The host trees under tests/data/hosts/posted-*/ hold published register
values (see each PROVENANCE.md); the IR state comes from real
/proc/interrupts captures in tests/data/corpus/proc-interrupts. Variants
(a module parameter flipped, a unit added) are made in a copy under tmp_path.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from vfio_advisor.facts import platform as platform_module
from vfio_advisor.facts.gather import gather_host
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.interrupts import parse_interrupts
from vfio_advisor.facts.kernel import parse_cmdline
from vfio_advisor.facts.platform import (
    MAY_BE_POSTED,
    NOT_POSTED,
    POSTED,
    UNKNOWN,
    intremap_settings,
    iommu_state,
    ir_chips,
    kernel_config_option,
    parse_amd_features,
    parse_hex_register,
    posting,
    read_iommu_units,
)
from vfio_advisor.testing.hosttree import capture_under_platform

DATA = Path(__file__).resolve().parent.parent / "data"
HOSTS = DATA / "hosts"
CAPTURES = DATA / "corpus" / "proc-interrupts"

# 32-CPU x86 host with remapping on: IR-PCI-MSIX-<bdf>, IR-IO-APIC chips.
IR_ON = parse_interrupts((CAPTURES / "martins3_int-procfs_vfio-msix_32cpu.txt").read_text())
# sysstat test data: IO-APIC / PCI-MSI chips without the IR- prefix.
IR_OFF = parse_interrupts((CAPTURES / "sysstat-tests-root1_9cpu.txt").read_text())


def tree(name: str, tmp_path: Path | None = None) -> HostRoot:
    src = HOSTS / name
    if tmp_path is None:
        return HostRoot(src)
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return HostRoot(dst)


def put(host: HostRoot, rel: str, text: str) -> None:
    path = Path(host.root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- register parsing on the published values ----------------------------------

def test_published_dmar_caps_pi_bit():
    # PI is bit 59 of the capability register (drivers/iommu/intel/iommu.h cap_pi_support).
    servers = [u for n in ("posted-intel-xeon-server", "posted-intel-spr-server")
               for u in read_iommu_units(tree(n))[0]]
    laptop = read_iommu_units(tree("posted-intel-icl-laptop"))[0]
    assert len(servers) == 13 and all(u.can_post is True for u in servers)
    assert [u.name for u in laptop] == ["dmar0", "dmar1"]
    assert all(u.can_post is False for u in laptop)
    assert laptop[1].register == 0xd2008c40660462


def test_published_amd_features_all_sysfs_formats():
    epyc = read_iommu_units(tree("posted-amd-epyc-server"))[0]
    b550 = read_iommu_units(tree("posted-amd-b550-desktop"))[0]
    thinkpad = read_iommu_units(tree("posted-amd-thinkpad-6.14"))[0]
    assert {u.register for u in epyc} == {0xa5bf732fa2295afe}  # 5.15 "%llx"
    assert all(u.can_post and u.efr2 is None for u in epyc)
    # 6.14 prints "EFR:EFR2": (0x58f77ef22294a5a, 0x0) in the boot log.
    assert (b550[0].register, b550[0].efr2) == (0x58f77ef22294a5a, 0)
    assert b550[0].can_post is False  # GA (bit 7) clear although GA_vAPIC is set
    # (0x206d73ef22254ade, 0x0) in the 6.14 boot log, "Virtual APIC enabled".
    assert (thinkpad[0].register, thinkpad[0].efr2) == (0x206d73ef22254ade, 0)
    assert thinkpad[0].can_post is True


# The ThinkPad's published values as each kernel prints them.
THINKPAD_EFR, THINKPAD_EFR2 = 0x206d73ef22254ade, 0x0


@pytest.mark.parametrize("release,text", [
    ((6, 1), f"{THINKPAD_EFR2:x}:{THINKPAD_EFR:x}"),   # Debian 12: EFR2:EFR
    ((6, 6), f"{THINKPAD_EFR2:x}:{THINKPAD_EFR:x}"),
    ((6, 7), f"{THINKPAD_EFR:x}:{THINKPAD_EFR2:x}"),   # 7b7563a93437: EFR:EFR2
    ((6, 12), f"{THINKPAD_EFR:x}:{THINKPAD_EFR2:x}"),  # Debian's 6.12
])
def test_features_order_follows_the_kernel_release(release, text):
    assert parse_amd_features(text, release) == (THINKPAD_EFR, THINKPAD_EFR2)


def test_features_order_by_the_trees_osrelease(tmp_path):
    """The same published values in a 6.1 tree (Debian 12's kernel) and a
    6.12 one: each file in its kernel's order, both read as posting-capable."""
    for release, text in (("6.1.0-37-amd64", f"0:{THINKPAD_EFR:x}"),
                          ("6.12.12+bpo-amd64", f"{THINKPAD_EFR:x}:0")):
        host = tree("posted-amd-thinkpad-6.14", tmp_path / release)
        put(host, "proc/sys/kernel/osrelease", release + "\n")
        put(host, "sys/class/iommu/ivhd0/amd-iommu/features", text + "\n")
        (unit,), _ = read_iommu_units(host)
        assert (unit.register, unit.efr2, unit.can_post) == (THINKPAD_EFR, 0, True), release


def test_two_registers_without_a_release_are_not_guessed(tmp_path):
    host = tree("posted-amd-thinkpad-6.14", tmp_path)
    (Path(host.root) / "proc/sys/kernel/osrelease").unlink()
    (unit,), _ = read_iommu_units(host)
    assert unit.register is None and "osrelease" in unit.problem
    put(host, "sys/module/kvm_amd/parameters/avic", "Y\n")
    assert posting(host, interrupts=IR_ON).verdict == MAY_BE_POSTED
    with pytest.raises(ValueError, match="order depends on the kernel"):
        parse_amd_features("0:1")


@pytest.mark.parametrize("bad", ["", "zz", "0x", "1:2:3", "1" * 17])
def test_bad_register_text_is_a_value_error(bad):
    with pytest.raises(ValueError):
        parse_amd_features(bad) if ":" in bad else parse_hex_register(bad)


# --- posting verdicts ----------------------------------------------------------

def test_xeon_server_with_remapping_posts():
    p = posting(tree("posted-intel-xeon-server"), interrupts=IR_ON)
    assert p.verdict == POSTED and p.vendor == "intel"
    assert p.host_cannot_count_msi
    assert any("bit 59" in e for e in p.evidence)


def test_spr_server_without_visible_remapping_may_post():
    # No /proc/interrupts in the tree: nothing rules posting out, one
    # condition is unread.
    p = posting(tree("posted-intel-spr-server"))
    assert p.verdict == MAY_BE_POSTED
    assert p.host_cannot_count_msi
    assert any("unread" in e for e in p.evidence)


def test_client_laptop_without_pi_does_not_post():
    p = posting(tree("posted-intel-icl-laptop"), interrupts=IR_ON)
    assert p.verdict == NOT_POSTED and not p.host_cannot_count_msi
    assert any("dmar0" in e and "bit 59" in e for e in p.evidence)


def test_one_unit_without_pi_disables_posting(tmp_path):
    # set_irq_posting_cap (irq_remapping.c 6.1) clears the capability if ANY unit lacks PI.
    host = tree("posted-intel-xeon-server", tmp_path)
    put(host, "sys/class/iommu/dmar7/intel-iommu/cap", "d2008c40660462\n")
    p = posting(host, interrupts=IR_ON)
    assert p.verdict == NOT_POSTED
    assert any("dmar7" in e for e in p.evidence) and not any("dmar0 (" in e for e in p.evidence)


def test_apicv_off_means_not_posted(tmp_path):
    host = tree("posted-intel-xeon-server", tmp_path)
    put(host, "sys/module/kvm_intel/parameters/enable_apicv", "N\n")
    p = posting(host, interrupts=IR_ON)
    assert p.verdict == NOT_POSTED
    assert any("enable_apicv=N" in e for e in p.evidence)


@pytest.mark.parametrize("cmdline,verdict", [
    ("ro intremap=nopost", NOT_POSTED),
    ("ro intremap=off", NOT_POSTED),
    ("ro nointremap", NOT_POSTED),
    ("ro intremap=nopost,on", POSTED),   # "on" clears disable_irq_post again
    ("ro intremap=nopost intremap=on", POSTED),
    ("ro intremap=nosid", POSTED),
    ("ro intel_iommu=off", POSTED),  # IR and PI do not depend on DMA remapping
])
def test_command_line(cmdline, verdict):
    p = posting(tree("posted-intel-xeon-server"), interrupts=IR_ON, cmdline=parse_cmdline(cmdline))
    assert p.verdict == verdict, p.evidence


def test_remapping_off_in_the_kernel_state_means_not_posted():
    p = posting(tree("posted-intel-xeon-server"), interrupts=IR_OFF)
    assert p.verdict == NOT_POSTED
    assert any("IR- prefix" in e for e in p.evidence)


def test_amd_server_default_avic_off_does_not_post():
    p = posting(tree("posted-amd-epyc-server"), interrupts=IR_ON)
    assert p.verdict == NOT_POSTED and p.vendor == "amd"
    assert any("avic=N" in e for e in p.evidence)


def test_amd_server_with_avic_posts(tmp_path):
    host = tree("posted-amd-epyc-server", tmp_path)
    put(host, "sys/module/kvm_amd/parameters/avic", "Y\n")
    p = posting(host, interrupts=IR_ON)
    assert p.verdict == POSTED
    assert any("inhibited" in e for e in p.evidence)
    legacy = posting(host, interrupts=IR_ON, cmdline=parse_cmdline("amd_iommu_intr=legacy"))
    assert legacy.verdict == NOT_POSTED
    assert any("amd_iommu_intr=legacy" in e for e in legacy.evidence)


def test_amd_desktop_without_ga_does_not_post_even_with_avic(tmp_path):
    host = tree("posted-amd-b550-desktop", tmp_path)
    put(host, "sys/module/kvm_amd/parameters/avic", "Y\n")
    p = posting(host, interrupts=IR_ON)
    assert p.verdict == NOT_POSTED
    assert any("lacks GA on ivhd0" in e for e in p.evidence)


def test_amd_laptop_on_6_14_with_efr2_zero_posts(tmp_path):
    """Read in the 6.0-6.6 order, this 6.14 host's EFR would be its EFR2, 0,
    and the host "not posted" for lack of GA and GAM_VAPIC."""
    host = tree("posted-amd-thinkpad-6.14", tmp_path)
    assert posting(host, interrupts=IR_ON).verdict == NOT_POSTED  # avic=N, the default
    put(host, "sys/module/kvm_amd/parameters/avic", "Y\n")
    p = posting(host, interrupts=IR_ON)
    assert p.verdict == POSTED, p.evidence
    assert any("ivhd0 206d73ef22254ade" in e for e in p.evidence)


def test_snp_host_without_snpavicsup_is_forced_to_legacy_ga(tmp_path):
    """Published: "Extended features (0xa5bf7320a2294aee, 0x1d)" and "Force to
    disable Virtual APIC due to SNP": EFR2 SNPAVICSUP (bits 7:5) is 0."""
    host = tree("posted-amd-snp-host-6.9", tmp_path)
    put(host, "sys/module/kvm_amd/parameters/avic", "Y\n")
    (unit,), _ = read_iommu_units(host)
    assert (unit.register, unit.efr2, unit.can_post) == (0xa5bf7320a2294aee, 0x1D, True)
    p = posting(host, interrupts=IR_ON)
    assert p.verdict == NOT_POSTED
    (snp,) = [e for e in p.evidence if "sev_snp=Y" in e]
    assert "SNPAVICSUP (bits 7:5) is 0" in snp and "Force to disable Virtual APIC due to SNP" in snp
    # The same IOMMU with SNP off in KVM, or before kvm_amd had the parameter: posted.
    put(host, "sys/module/kvm_amd/parameters/sev_snp", "N\n")
    assert posting(host, interrupts=IR_ON).verdict == POSTED
    (Path(host.root) / "sys/module/kvm_amd/parameters/sev_snp").unlink()
    assert posting(host, interrupts=IR_ON).verdict == POSTED
    # An IOMMU that supports guest vAPIC under SNP (SNPAVICSUP = 1) keeps posting.
    put(host, "sys/module/kvm_amd/parameters/sev_snp", "Y\n")
    put(host, "sys/class/iommu/ivhd0/amd-iommu/features", f"a5bf7320a2294aee:{0x1D | 1 << 5:x}\n")
    assert posting(host, interrupts=IR_ON).verdict == POSTED


def test_snp_with_efr2_unread_is_not_a_verdict(tmp_path):
    host = tree("posted-amd-snp-host-6.9", tmp_path)
    put(host, "sys/module/kvm_amd/parameters/avic", "Y\n")
    put(host, "sys/class/iommu/ivhd0/amd-iommu/features", "a5bf7320a2294aee\n")  # EFR alone
    p = posting(host, interrupts=IR_ON)
    assert p.verdict == MAY_BE_POSTED
    assert any("EFR2" in e and "sev_snp=Y" in e for e in p.evidence)


def test_no_kvm_module_is_not_posted(tmp_path):
    p = posting(HostRoot(tmp_path), interrupts=IR_ON)
    assert p.verdict == NOT_POSTED
    assert any("not loaded" in e for e in p.evidence)


def test_unreadable_register_and_no_interrupts_is_may_be(tmp_path):
    host = tree("posted-intel-xeon-server", tmp_path)
    put(host, "sys/class/iommu/dmar3/intel-iommu/cap", "garbage\n")
    p = posting(host)
    assert p.verdict == MAY_BE_POSTED
    assert any("dmar3" in e for e in p.evidence)


def test_kvm_parameter_unreadable_and_nothing_else_is_unknown(tmp_path):
    (tmp_path / "sys/module/kvm_intel/parameters").mkdir(parents=True)
    p = posting(HostRoot(tmp_path))
    assert p.verdict == UNKNOWN and not p.host_cannot_count_msi


# --- intremap= semantics -------------------------------------------------------

@pytest.mark.parametrize("cmdline,expected", [
    ("", (False, False)),
    ("intremap=nopost", (False, True)),
    ("intremap=off", (True, True)),
    ("intremap=off,on", (False, False)),
    ("nointremap", (True, False)),
    ("nointremap intremap=on", (False, False)),
])
def test_intremap_settings(cmdline, expected):
    assert intremap_settings(parse_cmdline(cmdline)) == expected


# --- effective IOMMU / IR state ------------------------------------------------

def test_kernel_state_wins_over_command_line():
    state = iommu_state(tree("posted-intel-xeon-server"), interrupts=IR_ON,
                        cmdline=parse_cmdline("intremap=off"))
    assert state.interrupt_remapping is True
    assert state.ir_evidence[0].startswith("/proc/interrupts: IR- chips")
    assert any("intremap=off" in e for e in state.ir_evidence)
    assert state.dma_remapping is True and state.vendor == "intel"


def test_command_line_decides_only_without_kernel_state():
    state = iommu_state(tree("posted-intel-xeon-server"), cmdline=parse_cmdline("intremap=off"))
    assert state.interrupt_remapping is False
    off = iommu_state(tree("posted-intel-xeon-server"), cmdline=parse_cmdline("intel_iommu=off"))
    assert off.interrupt_remapping is None  # Intel IR does not follow intel_iommu=off
    assert any("leaves Intel interrupt remapping on" in e for e in off.ir_evidence)


# The command-line cases kernel.py's KernelCmdline.intremap_off used to
# decide (it counted intel_iommu=off and iommu=off as "off"): with no chip
# and no IOMMU unit to read, only intremap=off / nointremap say off
# (drivers/iommu/irq_remapping.c 6.1, setup_irqremap / setup_nointremap).
@pytest.mark.parametrize("line, expected", [
    ("intel_iommu=on", None),
    ("intel_iommu=on intremap=off", False),
    ("intel_iommu=on intremap=nosid,off", False),  # intremap= is a comma list
    ("intel_iommu=on nointremap", False),
    ("intremap=on", None),
    ("intel_iommu=off", None),  # intel_prepare_irq_remapping ignores dmar_disabled
    ("iommu=off", None),  # no_iommu is read by neither IR prepare function
    ("amd_iommu=off", None),  # AMD IR off, but nothing says the host is AMD
    ("iommu=pt", None),
    ("amd_iommu_intr=legacy", None),
    ("", None),
])
def test_command_line_alone(tmp_path, line, expected):
    state = iommu_state(HostRoot(tmp_path), cmdline=parse_cmdline(line))
    assert state.interrupt_remapping is expected


# Real /proc/interrupts captures: IR- chips or plain MSI/IO-APIC chips decide,
# whatever the command line (here one that asks for nothing).
@pytest.mark.parametrize("name, expected", [
    ("forum-post_2015-10-24_vfio-msi_8cpu.txt", True),
    ("martins3_int-procfs_vfio-msix_32cpu.txt", True),
    ("sharathdm-vfio_nvme_readme_vfio-msix_20cpu.txt", True),
    ("sysstat-tests-root1_9cpu.txt", False),
    ("martins3_trace-tools-irq_32cpu.txt", False),
    ("coreos-sosreport_2cpu.txt", False),
])
def test_remapping_from_captured_chips(tmp_path, name, expected):
    interrupts = parse_interrupts((CAPTURES / name).read_text())
    state = iommu_state(HostRoot(tmp_path), interrupts=interrupts, cmdline=parse_cmdline("quiet"))
    assert state.interrupt_remapping is expected


def test_no_msi_or_ioapic_chip_is_no_evidence(tmp_path):
    nmi_only = parse_interrupts(" NMI:  1  Non-maskable interrupts\n")
    assert iommu_state(HostRoot(tmp_path), interrupts=nmi_only,
                       cmdline=parse_cmdline("quiet")).interrupt_remapping is None


def test_no_iommu_visible_means_off(tmp_path):
    state = iommu_state(HostRoot(tmp_path), interrupts=IR_OFF, cmdline=parse_cmdline("ro"))
    assert state.dma_remapping is False and state.interrupt_remapping is False


def test_amd_iommu_on_is_not_a_kernel_option(tmp_path):
    state = iommu_state(tree("posted-amd-b550-desktop"), cmdline=parse_cmdline("amd_iommu=on"))
    assert any("Unknown option" in e for e in state.dma_evidence)
    assert state.dma_remapping is True


def test_unsafe_interrupts_as_loaded(tmp_path):
    put(HostRoot(tmp_path), "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "Y\n")
    state = iommu_state(HostRoot(tmp_path), interrupts=IR_OFF,
                        cmdline=parse_cmdline("vfio_iommu_type1.allow_unsafe_interrupts=0"))
    assert state.allow_unsafe_interrupts is True and state.unsafe_interrupts


def test_debian_kernel_default_from_its_config(tmp_path):
    # Debian 12's own config (tests/data/kernel/debian-6.1.176): the Intel
    # IOMMU is on by default, except for the integrated GPU.
    host = HostRoot(tmp_path)
    put(host, "proc/sys/kernel/osrelease", "6.1.0-37-amd64\n")
    (tmp_path / "boot").mkdir()
    shutil.copy(DATA / "kernel" / "debian-6.1.176" / "config-amd64-iommu.txt",
                tmp_path / "boot" / "config-6.1.0-37-amd64")
    assert kernel_config_option(host, "INTEL_IOMMU_DEFAULT_ON") == "n"
    assert kernel_config_option(host, "INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF") == "y"
    assert kernel_config_option(host, "IRQ_REMAP") == "y"
    # No intel_iommu= on the command line: the build default is the evidence.
    put(host, "proc/cmdline", "ro quiet\n")
    state = iommu_state(host, interrupts=IR_ON)
    assert any("INTGPU_OFF, Debian 12" in e for e in state.dma_evidence)
    with_option = iommu_state(host, interrupts=IR_ON, cmdline=parse_cmdline("intel_iommu=on"))
    assert not any("by default" in e for e in with_option.dma_evidence)


# --- one scan of the interrupt chips (gather_host) ------------------------------

REPO = DATA.parents[1]
LAB_CAPTURES = sorted(p for p in (REPO / "lab/captures").iterdir() if (p / "proc/interrupts").exists())
PLATFORMS = sorted(p for p in HOSTS.glob("posted-*") if p.is_dir())


def _chip_scans(fn, names=frozenset({"ir_chips", "_chips_say_remapping"})) -> int:
    """How many times fn() runs a chip scan of facts/platform.py: calls of
    ir_chips (or of _chips_say_remapping, its name before posting() and
    iommu_state() shared one scan), counted with the interpreter's profiler;
    or calls of the functions `names`."""
    source = platform_module.__file__
    calls = []

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code.co_name in names and frame.f_code.co_filename == source:
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return len(calls)


def test_gather_host_scans_the_chips_once():
    host = HostRoot(REPO / "lab/captures/modes")
    assert _chip_scans(lambda: gather_host(host)) == 1


def test_gather_host_reads_the_iommu_units_once():
    host = HostRoot(REPO / "lab/captures/modes")
    assert _chip_scans(lambda: gather_host(host), {"read_iommu_units"}) == 1


@pytest.mark.parametrize("capture", LAB_CAPTURES, ids=lambda p: p.name)
def test_gather_host_verdicts_equal_the_standalone_ones_on_lab_captures(capture):
    host = HostRoot(capture)
    facts = gather_host(host)
    assert facts.posting == posting(host)
    assert facts.iommu == iommu_state(host, build_default=False)


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: p.name)
def test_shared_chips_give_the_same_verdicts_on_published_platforms(tmp_path, platform):
    # Every lab capture's interrupts and command line against the platform's
    # published registers (no copy needed: both paths read the same tree)...
    host = HostRoot(platform)
    for capture in LAB_CAPTURES:
        interrupts = parse_interrupts((capture / "proc/interrupts").read_text())
        cmdline = parse_cmdline((capture / "proc/cmdline").read_text())
        chips = ir_chips(interrupts)
        assert posting(host, cmdline=cmdline, chips=chips) == \
            posting(host, interrupts=interrupts, cmdline=cmdline), capture.name
        assert iommu_state(host, cmdline=cmdline, chips=chips) == \
            iommu_state(host, interrupts=interrupts, cmdline=cmdline), capture.name
    # ... and gather_host on the tree capture_under_platform lays out (modes:
    # IR on, MSI-X), as the posted-* rule examples use it.
    root = HostRoot(capture_under_platform(tmp_path / "root", REPO / "lab/captures/modes", platform))
    facts = gather_host(root)
    assert facts.posting == posting(root)
    assert facts.iommu == iommu_state(root, build_default=False)


def test_ir_chips_without_a_table_or_chips():
    assert ir_chips(None).remapped is None
    assert ir_chips(parse_interrupts(" NMI:  1  Non-maskable interrupts\n")).remapped is None
    assert ir_chips(IR_ON).remapped is True and ir_chips(IR_OFF).remapped is False


# arm64 rows as public captures print them (GICv3 and its ITS: an NVMe under
# Xen on arm64, an xhci_hcd in an LKML thread on a GIC-ITS host).
ARM64_ITS = parse_interrupts(
    "           CPU0       CPU1\n"
    " 11:      10413       9802     GICv3  27 Level     arch_timer\n"
    " 37:         17          0   ITS-MSI 524288 Edge      nvme0q0\n"
    "512:          0          0   ITS-MSI 524289 Edge      xhci_hcd\n"
    "IPI0:        30        101       Rescheduling interrupts\n")


def test_ir_chips_do_not_read_an_arm64_its_as_remapping_off():
    """A GICv3 ITS isolates MSIs without "IR-" chips (vfio attaches its
    groups): only x86's own chips without the prefix say remapping is off,
    so the start-failure rule cannot fire there."""
    assert ir_chips(ARM64_ITS).remapped is None
    x86_off = parse_interrupts("           CPU0\n  24:   5   PCI-MSI 512000-edge   ahci[0000:00:1f.2]\n")
    assert ir_chips(x86_off).remapped is False
