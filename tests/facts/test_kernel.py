"""Kernel facts: command line, cpulists, vfio module parameters.

Interrupt remapping is facts.platform.iommu_state's: tests/facts/test_platform.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import nobody
from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.kernel import (
    KernelFacts,
    parse_cmdline,
    parse_kernel_release,
    parse_cpulist,
    read_kernel_facts,
)

# A typical passthrough host's /proc/cmdline (trailing newline as the kernel prints it).
DESKTOP = ("BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=UUID=0b0e9d7c-58a8-4a36-9bc1-3f1f0a8ac5d1 ro "
           "quiet splash intel_iommu=on iommu=pt vfio-pci.ids=10de:1b80,10de:10f0 "
           "isolcpus=domain,managed_irq,2-5 nohz_full=2-5 rcu_nocbs=2-5 irqaffinity=0-1,6-7\n")


# --- parse_cmdline -------------------------------------------------------------

def test_desktop_cmdline():
    cmd = parse_cmdline(DESKTOP)
    assert cmd.raw == DESKTOP.strip()
    assert cmd.params[0] == ("BOOT_IMAGE", "/boot/vmlinuz-6.1.0-18-amd64")
    assert ("quiet", None) in cmd.params and ("ro", None) in cmd.params
    assert cmd.get("root") == "UUID=0b0e9d7c-58a8-4a36-9bc1-3f1f0a8ac5d1"  # split on the first '=' only
    assert cmd.get("quiet") == ""  # present without a value
    assert cmd.get("nomodeset") is None
    assert cmd.get("vfio_pci.ids") == "10de:1b80,10de:10f0"  # '-' and '_' are the same
    assert cmd.isolcpus == frozenset({2, 3, 4, 5})
    assert cmd.nohz_full == frozenset({2, 3, 4, 5})
    assert cmd.irqaffinity == frozenset({0, 1, 6, 7})
    assert (cmd.get("intel_iommu"), cmd.get("iommu")) == ("on", "pt")
    assert not cmd.pci_nomsi


def test_pci_nomsi_noaer():
    cmd = parse_cmdline("root=/dev/sda1 pci=nomsi,noaer")
    assert cmd.values("pci") == ["nomsi", "noaer"]
    assert cmd.pci_nomsi
    assert parse_cmdline("pci=noaer pci=nomsi").pci_nomsi  # several pci= add up
    assert not parse_cmdline("pci=noaer,nomsix pci=realloc").pci_nomsi
    assert not parse_cmdline("nomsi").pci_nomsi


def test_last_value_wins():
    cmd = parse_cmdline("isolcpus=1 intel_iommu=off isolcpus=3-4 intel_iommu=on")
    assert cmd.isolcpus == frozenset({3, 4})
    assert cmd.get("intel_iommu") == "on"


def test_quoted_values():
    cmd = parse_cmdline('dyndbg="file drivers/vfio/* +p" acpi_osi="Windows 2015" quiet')
    assert cmd.get("dyndbg") == "file drivers/vfio/* +p"
    assert cmd.get("acpi_osi") == "Windows 2015"
    assert cmd.get("quiet") == ""
    assert len(cmd.params) == 3


def test_unbalanced_quote_runs_to_the_end_as_in_the_kernel():
    # lib/cmdline.c next_arg: an open quote swallows the rest of the line.
    cmd = parse_cmdline('root=/dev/sda1 acpi_osi="Linux intel_iommu=on')
    assert cmd.get("root") == "/dev/sda1"
    assert cmd.get("acpi_osi") == "Linux intel_iommu=on"
    assert cmd.get("intel_iommu") is None


def test_quoted_value_keeps_its_spaces():
    cmd = parse_cmdline('a=1 dyndbg="file vfio_pci_core.c +p" intel_iommu=on')
    assert cmd.get("dyndbg") == "file vfio_pci_core.c +p"
    assert cmd.get("intel_iommu") == "on"


def test_empty_cmdline():
    cmd = parse_cmdline("")
    assert cmd.params == () and cmd.raw == ""
    assert cmd.isolcpus == frozenset() and cmd.get("intel_iommu") is None


# --- parse_cpulist ---------------------------------------------------------------

@pytest.mark.parametrize("text, cpus", [
    ("", set()),
    ("0", {0}),
    ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
    (" 1 , 2 ", {1, 2}),
    ("2-5\n", {2, 3, 4, 5}),
    ("domain,managed_irq,2-5", {2, 3, 4, 5}),
    ("nohz,domain,1,3", {1, 3}),
    ("3-1", set()),  # reversed range: ignored
    ("a-b", set()),
    ("-1", set()),
    ("1-x,4", {4}),
    ("8191", {8191}),
    ("8192", set()),  # beyond NR_CPUS limit used by the parser
    ("\u00b2", set()),
    (",,,", set()),
])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == frozenset(cpus)


def test_parse_cpulist_large_range():
    assert parse_cpulist("0-8191") == frozenset(range(8192))
    assert parse_cpulist("0-8192") == frozenset()


def test_parse_cpulist_group_syntax_includes_the_used_cpus():
    # Kernel bitmap_parselist "0-15:2/4" = CPUs 0,1,4,5,8,9,12,13. The parser keeps
    # the whole range (documented in kernel.py); at least the used CPUs are in it.
    cpus = parse_cpulist("0-15:2/4")
    assert {0, 1, 4, 5, 8, 9, 12, 13} <= cpus <= set(range(16))


# --- KernelFacts ---------------------------------------------------------------

def facts(**kw) -> KernelFacts:
    base = dict(cmdline=None, vfio_pci_params=None, allow_unsafe_interrupts=None,
                iommu_groups=None, unreadable=())
    base.update(kw)
    return KernelFacts(**base)


@pytest.mark.parametrize("params, cmdline, expected", [
    ({"nointxmask": "Y"}, None, True),
    ({"nointxmask": "N"}, None, False),
    ({"nointxmask": "1"}, None, True),
    ({"disable_vga": "N"}, "vfio_pci.nointxmask=1", True),
    (None, "vfio-pci.nointxmask=Y", True),
    (None, "vfio_pci.nointxmask=0", False),
    (None, "quiet", False),
    (None, None, False),
    ({"nointxmask": "N"}, "vfio_pci.nointxmask=1", False),  # the loaded module wins
])
def test_nointxmask(params, cmdline, expected):
    kf = facts(vfio_pci_params=params, cmdline=parse_cmdline(cmdline) if cmdline is not None else None)
    assert kf.nointxmask is expected


# --- read_kernel_facts ---------------------------------------------------------

def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def full_tree(root: Path) -> Path:
    write(root, "proc/cmdline", DESKTOP)
    write(root, "sys/module/vfio_pci/parameters/nointxmask", "N\n")
    write(root, "sys/module/vfio_pci/parameters/disable_vga", "Y\n")
    write(root, "sys/module/vfio_pci/parameters/ids", "\n")
    write(root, "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "N\n")
    for group in (0, 1, 2, 13):
        (root / f"sys/kernel/iommu_groups/{group}/devices").mkdir(parents=True)
    return root


def test_read_kernel_facts_full_tree(tmp_path):
    host = HostRoot(full_tree(tmp_path), record=True)
    kf = read_kernel_facts(host)
    assert kf.unreadable == ()
    assert kf.cmdline.get("intel_iommu") == "on" and kf.cmdline.isolcpus == frozenset({2, 3, 4, 5})
    assert kf.vfio_pci_params == {"nointxmask": "N", "disable_vga": "Y", "ids": ""}
    assert kf.nointxmask is False
    assert kf.allow_unsafe_interrupts is False
    assert kf.iommu_groups == 4
    assert {"proc/cmdline", "sys/kernel/iommu_groups", "sys/kernel/iommu_groups/13"} <= host.recorded


def test_read_kernel_facts_empty_tree(tmp_path):
    kf = read_kernel_facts(HostRoot(tmp_path))
    assert kf.cmdline is None
    assert kf.unreadable == ("proc/cmdline: missing",)
    assert kf.vfio_pci_params is None  # module not loaded
    assert kf.allow_unsafe_interrupts is None
    assert kf.iommu_groups == 0  # no IOMMU driver


def test_allow_unsafe_interrupts_from_cmdline_when_module_not_loaded(tmp_path):
    write(tmp_path, "proc/cmdline", "intel_iommu=on vfio_iommu_type1.allow_unsafe_interrupts=1\n")
    kf = read_kernel_facts(HostRoot(tmp_path))
    assert kf.allow_unsafe_interrupts is True
    write(tmp_path, "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "N\n")
    assert read_kernel_facts(HostRoot(tmp_path)).allow_unsafe_interrupts is False


def test_unreadable_parameter_is_recorded_not_fatal(tmp_path):
    full_tree(tmp_path)
    # A parameter that cannot be read as a file (a directory in its place).
    (tmp_path / "sys/module/vfio_pci/parameters/nointxmask").unlink()
    (tmp_path / "sys/module/vfio_pci/parameters/nointxmask").mkdir()
    kf = read_kernel_facts(HostRoot(tmp_path))
    assert kf.vfio_pci_params == {"disable_vga": "Y", "ids": ""}
    assert len(kf.unreadable) == 1
    assert kf.unreadable[0].startswith("sys/module/vfio_pci/parameters/nointxmask: ")


def test_dangling_parameter_symlink_is_missing(tmp_path):
    full_tree(tmp_path)
    (tmp_path / "sys/module/vfio_pci/parameters/nointxmask").unlink()
    os.symlink("does-not-exist", tmp_path / "sys/module/vfio_pci/parameters/nointxmask")
    kf = read_kernel_facts(HostRoot(tmp_path))
    assert kf.unreadable == ("sys/module/vfio_pci/parameters/nointxmask: missing",)


# --- permissions, as a real unprivileged user (tests/nobody.py) ----------------

# Run as nobody: read_kernel_facts over argv[1], the fields these tests need.
KERNEL_FACTS_AS_JSON = """
import json, sys
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.kernel import read_kernel_facts
kf = read_kernel_facts(HostRoot(sys.argv[1]))
print(json.dumps({"cmdline": kf.cmdline.raw if kf.cmdline else None,
                  "unreadable": list(kf.unreadable), "iommu_groups": kf.iommu_groups,
                  "params": kf.vfio_pci_params}))
"""
DENIED = "permission denied (run as root for full facts)"


@pytest.fixture
def nobody_tree():
    nobody.require()
    with nobody.tree() as root:
        full_tree(root)
        yield root


def test_nobody_reads_the_tree(nobody_tree):
    """The control for the tests below: with ordinary modes nobody reads it all."""
    facts = nobody.python_json(KERNEL_FACTS_AS_JSON, str(nobody_tree))
    assert facts["unreadable"] == []
    assert facts["cmdline"] == DESKTOP.strip() and facts["iommu_groups"] == 4


def test_mode_000_cmdline_as_nobody(nobody_tree):
    (nobody_tree / "proc/cmdline").chmod(0)
    facts = nobody.python_json(KERNEL_FACTS_AS_JSON, str(nobody_tree))
    assert facts["cmdline"] is None
    assert facts["unreadable"] == [f"proc/cmdline: {DENIED}"]
    assert facts["iommu_groups"] == 4  # the rest still read


def test_mode_000_module_parameter_as_nobody(nobody_tree):
    (nobody_tree / "sys/module/vfio_pci/parameters/nointxmask").chmod(0)
    facts = nobody.python_json(KERNEL_FACTS_AS_JSON, str(nobody_tree))
    assert facts["params"] == {"disable_vga": "Y", "ids": ""}
    assert facts["unreadable"] == [f"sys/module/vfio_pci/parameters/nointxmask: {DENIED}"]


def test_unlistable_iommu_groups_as_nobody(nobody_tree):
    # Search but no read permission: the directory can be entered, not listed.
    (nobody_tree / "sys/kernel/iommu_groups").chmod(0o311)
    facts = nobody.python_json(KERNEL_FACTS_AS_JSON, str(nobody_tree))
    assert facts["iommu_groups"] is None
    assert facts["unreadable"] == [f"sys/kernel/iommu_groups: {DENIED}"]
    assert facts["cmdline"] == DESKTOP.strip()


def test_host_root_errors_are_fact_unavailable(tmp_path):
    host = HostRoot(tmp_path)
    with pytest.raises(FactUnavailable) as info:
        host.read_text("proc/interrupts")
    assert (info.value.path, info.value.reason) == ("proc/interrupts", "missing")
    assert str(info.value) == "proc/interrupts: missing"
    with pytest.raises(FactUnavailable):
        host.list_dir("sys/kernel/iommu_groups")
    with pytest.raises(FactUnavailable):
        host.read_link_name("sys/bus/pci/devices/0000:01:00.0/driver")
    assert repr(host) == f"HostRoot({str(tmp_path)!r})"


def test_host_root_replaces_bad_utf8(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_bytes(b"quiet root=\xff\xfe intel_iommu=on\n")
    kf = read_kernel_facts(HostRoot(tmp_path))
    assert kf.cmdline.get("intel_iommu") == "on"
    assert "\ufffd" in kf.cmdline.get("root")


def test_host_root_refuses_symlink_outside_root(tmp_path):
    (tmp_path / "root/sys").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink("../../outside", tmp_path / "root/sys/escape")
    with pytest.raises(FactUnavailable, match="outside the host root"):
        HostRoot(tmp_path / "root").resolve("sys/escape")


@pytest.mark.parametrize("text,release", [
    ("6.1.0-37-amd64\n", (6, 1)),            # Debian 12
    ("6.12.12+bpo-amd64\n", (6, 12)),        # Debian 12 backports
    ("6.14.0-rc4-1.2-mainline-dirty", (6, 14)),
    ("5.15.0-velinux", (5, 15)),
    ("", None), ("garbage", None), ("6", None),
])
def test_parse_kernel_release(text, release):
    assert parse_kernel_release(text) == release


def test_kernel_facts_carry_the_trees_release(tmp_path):
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text("6.12.12+bpo-amd64\n")
    assert read_kernel_facts(HostRoot(tmp_path)).release == (6, 12)
    (tmp_path / "proc/sys/kernel/osrelease").unlink()
    assert read_kernel_facts(HostRoot(tmp_path)).release is None
