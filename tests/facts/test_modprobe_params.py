"""A vfio module parameter of a module not loaded yet is what modprobe will
pass when it loads it (facts/kernel.py module_param): the options of the
modprobe.d files (kmod's directories in priority order, a file name in
/etc hiding the same name in /lib, the files read in name order, the last
value kept), then the kernel command line's module.param= (kmod appends
those after the files' options, and the kernel keeps the last). The loaded
module's sysfs value wins over both.

On the lab's intremap-off capture with vfio_iommu_type1 removed (remapping
off, the module not loaded yet), that decides the advice: a modprobe.d file
with allow_unsafe_interrupts=1 makes the guest run unisolated (VA3002), and
nothing setting it (a modprobe.d directory there, no option) makes the start
fail (VA3008, error). Only a tree without any modprobe.d directory (a
recorded one) leaves the hedged warning."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.rules.examples import LAB_XML, _lab_copy, _without_unsafe_cmdline, lab
from vfio_advisor.engine import run_rules
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.kernel import (
    ModuleParam, module_param, parse_bool_param, parse_cmdline, read_kernel_facts, read_modprobe_options,
)


def put(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def param(root: Path, cmdline: str = "", module: str = "vfio_iommu_type1",
          name: str = "allow_unsafe_interrupts") -> ModuleParam:
    host = HostRoot(str(root))
    return module_param(host, parse_cmdline(cmdline), module, name, "N", lambda: read_modprobe_options(host)[0])


@pytest.mark.parametrize("text, value", [
    ("Y", True), ("N", False), ("1\n", True), ("0", False), ("on", True), ("off", False), ("ON", True),
    ("", True),  # the parameter alone: param_set_bool takes it as "1"
    ("yes", True), ("no", False), ("maybe", None), (None, None),
])
def test_bool_values_parse_as_the_kernel_parses_them(text, value):
    assert parse_bool_param(text) is value


def test_modprobe_d_in_kmods_order_and_the_command_line_last(tmp_path):
    assert param(tmp_path) == ModuleParam(None, None)  # no modprobe.d at all: not known
    put(tmp_path, "lib/modprobe.d/aliases.conf", "alias char-major-10-196 vfio\n")
    assert param(tmp_path) == ModuleParam("N", "default")  # read, and nothing sets it: its default
    put(tmp_path, "lib/modprobe.d/vfio.conf", "options vfio_iommu_type1 allow_unsafe_interrupts=1\n")
    assert param(tmp_path) == ModuleParam("1", "/lib/modprobe.d/vfio.conf")
    # The same name in /etc hides /lib's; a later name is read later and wins.
    put(tmp_path, "etc/modprobe.d/vfio.conf", "# mine\noptions vfio-iommu-type1 allow_unsafe_interrupts=0\n")
    assert param(tmp_path) == ModuleParam("0", "/etc/modprobe.d/vfio.conf")
    put(tmp_path, "etc/modprobe.d/zz-passthrough.conf",
        "options vfio_iommu_type1 \\\n  allow_unsafe_interrupts disable_hugepages=1\n")
    assert param(tmp_path) == ModuleParam("", "/etc/modprobe.d/zz-passthrough.conf")
    put(tmp_path, "etc/modprobe.d/zz-passthrough.conf.dpkg-old", "options vfio_iommu_type1 allow_unsafe_interrupts=N\n")
    assert param(tmp_path).source == "/etc/modprobe.d/zz-passthrough.conf"  # only *.conf
    # The command line comes after the files; the loaded module before all.
    assert param(tmp_path, "quiet vfio_iommu_type1.allow_unsafe_interrupts=N") == \
        ModuleParam("N", "kernel command line")
    put(tmp_path, "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "Y\n")
    assert param(tmp_path, "vfio_iommu_type1.allow_unsafe_interrupts=N") == ModuleParam("Y\n".strip(), "loaded")


def test_nointxmask_from_modprobe_d_before_vfio_pci_loads(tmp_path):
    put(tmp_path, "proc/cmdline", "quiet\n")
    put(tmp_path, "etc/modprobe.d/vfio.conf", "options vfio-pci ids=10de:1b80 nointxmask=1\n")
    kernel = read_kernel_facts(HostRoot(str(tmp_path)))
    assert kernel.vfio_pci_params is None and kernel.nointxmask
    assert kernel.nointxmask_param == ModuleParam("1", "/etc/modprobe.d/vfio.conf")
    put(tmp_path, "sys/module/vfio_pci/parameters/nointxmask", "N\n")  # loaded: its value
    assert not read_kernel_facts(HostRoot(str(tmp_path))).nointxmask


def _not_loaded(tmp_path: Path) -> Path:
    root = _lab_copy(tmp_path, "intremap-off")
    _without_unsafe_cmdline(root)
    shutil.rmtree(root / "sys/module/vfio_iommu_type1")
    return root


def _findings(root: Path, rule: str):
    return [f for f in run_rules(lab(root, LAB_XML / "modes.xml")) if f.rule_id == rule]


def test_modprobe_d_allowing_unsafe_interrupts_is_unisolated(tmp_path):
    root = _not_loaded(tmp_path)
    put(root, "etc/modprobe.d/vfio.conf", "options vfio_iommu_type1 allow_unsafe_interrupts=1\n")
    (f,) = _findings(root, "VA3002")
    assert "allow_unsafe_interrupts=1 (the module is not loaded yet; /etc/modprobe.d/vfio.conf sets it)" \
        in f.message
    assert "without MSI isolation" in f.message and _findings(root, "VA3008") == []


def test_nothing_setting_it_fails_the_start(tmp_path):
    root = _not_loaded(tmp_path)
    put(root, "lib/modprobe.d/aliases.conf", "alias char-major-10-196 vfio\n")
    (f,) = _findings(root, "VA3008")
    assert str(f.severity) == "error"
    assert "is N (its default: the module is not loaded yet, and neither the kernel command line " \
           "nor a modprobe.d file sets it)" in f.message
    assert _findings(root, "VA3002") == []


def test_a_tree_without_modprobe_d_stays_hedged(tmp_path):
    root = _not_loaded(tmp_path)
    assert not any((root / d).exists() for d in ("etc/modprobe.d", "lib/modprobe.d"))
    (f,) = _findings(root, "VA3002")
    assert "not known" in f.message and _findings(root, "VA3008") == []
