"""Minimal edits of the user's text (vfio_advisor/fix/textedit.py) at the
edges a corpus rarely shows: an empty parent that gains a child, a file
without a final newline, an element sharing its line, a comment that looks
like markup. Each result must parse to the planned tree and keep every
other byte."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vfio_advisor.facts.domain import PciAddress, parse_tree
from vfio_advisor.fix.planner import unified_diff
from vfio_advisor.fix.textedit import render, same_tree
from vfio_advisor.fix.xmledit import Op, apply_ops

DOMAIN = """<?xml version='1.0'?>
<!-- <domain> in a comment is not an element -->
<domain type='kvm'><name>t</name>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features/>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/><controller type='pci' index='1' model='pcie-root-port'><address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/></controller>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x08' slot='0x00' function='0x0'/></source>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </hostdev>
  </devices>
</domain>"""


def edited(text, ops):
    root = parse_tree(text)
    out = render(text, root, ops)
    assert out is not None
    assert same_tree(parse_tree(out), apply_ops(root, ops))
    return out


def test_an_empty_parent_gains_its_child():
    out = edited(DOMAIN, [Op("ensure-ioapic", value="kvm")])
    assert "<features>" in out and "<ioapic driver='kvm'/>" in out
    assert out.replace("\n", "").count("<features") == 1
    # everything outside <features> is as it was
    head, _, tail = DOMAIN.partition("  <features/>")
    assert out.startswith(head) and out.endswith(tail)


def test_an_element_sharing_its_line_is_cut_out_alone():
    ops = [Op("set-address", key=("hostdev", "0000:08:00.0"), address=PciAddress(0, 0, 3, 0)),
           Op("remove", key=("controller", 1))]
    out = edited(DOMAIN, ops)
    assert "    <controller type='pci' index='0' model='pcie-root'/>\n    <hostdev" in out
    assert "bus='0x00' slot='0x03'" in out


def test_a_file_without_a_final_newline_patches(tmp_path):
    if shutil.which("patch") is None:
        pytest.skip("patch is not installed (Debian package patch)")
    text = DOMAIN.replace("</domain>", "  <!-- last line -->\n</domain>")
    ops = [Op("set-attr", xpath="os/type", name="machine", value="pc-q35-7.2")]
    out = edited(text, ops)
    assert not out.endswith("\n") and out.count("\n") == text.count("\n")
    path = tmp_path / "d.xml"
    path.write_text(text)
    diff = unified_diff(text, out, "a", "b")
    run = subprocess.run(["patch", "--quiet", "--batch", str(path)], input=diff,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert path.read_text() == out
    # and the last line, touched, too
    ops = [Op("remove", key=("hostdev", "0000:08:00.0"))]
    out = edited(DOMAIN, ops)
    path.write_text(DOMAIN)
    run = subprocess.run(["patch", "--quiet", "--batch", str(path)],
                         input=unified_diff(DOMAIN, out, "a", "b"), capture_output=True, text=True)
    assert run.returncode == 0 and path.read_text() == out, run.stdout + run.stderr
