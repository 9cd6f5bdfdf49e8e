"""`advise` run as a real unprivileged user (nobody, via setpriv; tests/nobody.py).

Two things an unprivileged run meets for real: a file it may not read (here
/proc/interrupts at mode 000 in a copy of the demo host), and the kernel's
64-byte answer to an unprivileged read of a PCI config space (this machine's
own /sys). Each must give a VA8002 line saying what was skipped, never a
traceback and never advice built on what could not be read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests import nobody

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples/demo-host"
DENIED = "permission denied (run as root for full facts)"


@pytest.fixture
def demo_copy():
    """The demo host and its libvirt test-driver node, where nobody can read them."""
    nobody.require()
    with nobody.tree() as tree:
        shutil.copytree(DEMO / "root", tree / "root", symlinks=True)  # sysfs links loop
        shutil.copy(DEMO / "node.xml", tree / "node.xml")
        yield tree


def advise(tree: Path, *args: str):
    return nobody.cli("advise", "--connect", f"test://{tree / 'node.xml'}",
                      "--host-root", str(tree / "root"), "win11", *args)


def assert_no_traceback(out):
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    assert out.stderr == "", out.stderr


def test_control_nobody_reads_the_demo_copy(demo_copy):
    """With ordinary modes nobody gets the demo's advice: VA1001 on the HDMI
    audio function, from the vfio-intx row of /proc/interrupts."""
    out = advise(demo_copy, "--format", "json")
    assert_no_traceback(out)
    assert out.returncode == 1  # VA1001 is a warning
    doc = json.loads(out.stdout)
    assert doc["host"]["interrupts_problem"] is None
    (dom,) = doc["domains"]
    audio = dom["devices"][1]
    assert audio["host_interrupts"]["mode"] == "intx"
    assert [f["rule"] for f in audio["findings"]] == ["VA1001"]
    assert not [f for f in dom["findings"] if f["rule"] == "VA8002"]


def test_unreadable_proc_interrupts_json(demo_copy):
    (demo_copy / "root/proc/interrupts").chmod(0)
    out = advise(demo_copy, "--format", "json")
    assert_no_traceback(out)
    assert out.returncode == 0  # only the info-level VA8002 is left
    doc = json.loads(out.stdout)
    assert doc["host"]["interrupts_problem"] == f"proc/interrupts: {DENIED}"
    (dom,) = doc["domains"]
    (va8002,) = [f for f in dom["findings"] if f["rule"] == "VA8002"]
    assert va8002["subject"] is None
    assert va8002["evidence"] == {"proc/interrupts": f"proc/interrupts: {DENIED}"}
    for dev in dom["devices"]:
        # No mode, hence no VA1001 built on a count that was never read.
        assert dev["host_interrupts"]["mode"] == "unknown"
        assert dev["findings"] == []


def test_unreadable_proc_interrupts_text_is_one_line(demo_copy):
    (demo_copy / "root/proc/interrupts").chmod(0)
    out = advise(demo_copy)
    assert_no_traceback(out)
    assert out.returncode == 0
    lines = [ln for ln in out.stdout.splitlines() if "VA8002 " in ln and "explain" not in ln]
    assert lines == [f"  info    VA8002 Host interrupts could not be read (proc/interrupts: {DENIED}); "
                     "interrupt mode and line sharing were not checked."]
    assert "VA1001" not in out.stdout


def test_real_config_space_as_nobody_gives_va8002(tmp_path):
    """advise over this machine's own /sys as nobody: the kernel hands out 64
    bytes of each config space (drivers/pci/pci-sysfs.c pci_read_config(),
    Linux 6.1: the full size needs CAP_SYS_ADMIN), so each device with a
    capability list gets VA8002 naming the short read. As root (the control)
    the same command reads it whole and says nothing of the kind."""
    if os.geteuid() != 0:
        pytest.skip("needs root for the control run")
    devices = []
    for path in sorted(Path("/sys/bus/pci/devices").glob("*")):
        with open(path / "config", "rb") as f:
            head = f.read(15)
        # A type 0 header (an endpoint, not a bridge or CardBus: those get 128
        # bytes) with a capability list (Status bit 4): MSI needs more than 64 bytes.
        if len(head) == 15 and head[14] & 0x7F == 0 and head[6] & 0x10:
            devices.append(path.name)
    if not devices:
        pytest.skip("no PCI endpoint with capabilities in this machine's /sys/bus/pci/devices")
    nobody.require()
    bdf = devices[0]
    domain, bus, rest = bdf.split(":")
    slot, function = rest.split(".")
    xml = ("<domain type='kvm'><name>real</name><os><type machine='pc-q35-7.2'>hvm</type></os>"
           "<devices><hostdev mode='subsystem' type='pci'><source>"
           f"<address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>"
           "</source></hostdev></devices></domain>")
    with nobody.tree() as tree:
        (tree / "real.xml").write_text(xml)
        (tree / "real.xml").chmod(0o644)
        args = ["advise", "--xml", str(tree / "real.xml"), "--host-root", "/", "--format", "json"]
        as_nobody = nobody.cli(*args)
        as_root = subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                                 text=True, timeout=120, env=dict(os.environ, NO_COLOR="1"))
    for out in (as_nobody, as_root):
        assert "Traceback" not in out.stderr, out.stderr
        assert out.returncode in (0, 1), out.stderr  # 1 if this host earns a warning
    short = ("config: only 64 of 256 bytes readable (not root, or no CAP_SYS_ADMIN); "
             "capabilities not checked")

    def device(out):
        (dev,) = json.loads(out.stdout)["domains"][0]["devices"]
        return dev

    mine = device(as_nobody)
    assert short in mine["unreadable"]
    assert mine["capabilities"]["msi"] == "unknown"
    (va8002,) = [f for f in mine["findings"] if f["rule"] == "VA8002"]
    assert short in va8002["message"]
    full = device(as_root)
    assert not [u for u in full["unreadable"] if u.startswith("config")]
    assert full["capabilities"]["msi"] != "unknown"
    assert not [f for f in full["findings"] if f["rule"] == "VA8002"]


def _snapshot_as_nobody(demo_copy):
    """`snapshot` of the demo copy run as nobody into a directory it may
    write; it must refuse nothing whole and exit 2 (an input not read)."""
    out_dir = demo_copy / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    archive = out_dir / "s.tar.gz"
    out = nobody.cli("snapshot", "-o", str(archive), "--connect", f"test://{demo_copy / 'node.xml'}",
                     "--host-root", str(demo_copy / "root"))
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.stdout, out.stderr)
    return out, archive


def test_snapshot_says_which_file_it_could_not_read(demo_copy):
    """A file the tool read but nobody may open is not archived: the
    replay would call it missing, so the snapshot names it, keeps the
    reason in SNAPSHOT.txt and exits 2 (an input that could not be read)."""
    (demo_copy / "root/proc/interrupts").chmod(0o600)
    out, archive = _snapshot_as_nobody(demo_copy)
    assert out.stderr == "vfio-advisor: not archived proc/interrupts: Permission denied\n"
    assert out.stdout.startswith(f"wrote {archive}: ")
    with tarfile.open(archive) as tar:
        assert "proc/interrupts" not in tar.getnames()
        note = tar.extractfile("SNAPSHOT.txt").read().decode()
    assert "not archived: proc/interrupts: Permission denied\n" in note, note


@pytest.mark.parametrize("directory, mode, named", [
    # Not enterable: the file under it could not even be looked at. It was
    # "cannot write s.tar.gz: Permission denied" and no archive at all.
    ("sys/module/vfio_iommu_type1/parameters", 0o700,
     ["sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts: Permission denied"]),
    # Enterable but not listable: the groups the devices' links reach were
    # archived as if they were all there were, and the snapshot exited 0.
    ("sys/kernel/iommu_groups", 0o711,
     ["sys/kernel/iommu_groups: Permission denied (its entries could not be listed)"]),
])
def test_snapshot_names_what_a_directory_it_cannot_enter_hides(demo_copy, directory, mode, named):
    """As for a file it could not read: each path is named on stderr and in
    SNAPSHOT.txt, everything else is archived, and the exit status is 2."""
    (demo_copy / "root" / directory).chmod(mode)
    out, archive = _snapshot_as_nobody(demo_copy)
    assert out.stderr.splitlines() == [f"vfio-advisor: not archived {line}" for line in named]
    assert out.stdout.startswith(f"wrote {archive}: ")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        note = tar.extractfile("SNAPSHOT.txt").read().decode()
    assert "proc/interrupts" in names and "domains/win11.xml" in names  # the rest is there
    for line in named:
        assert f"not archived: {line}\n" in note, note


def test_snapshot_keeps_a_file_it_only_saw_exists():
    """An ACPI table (0400 root, as sysfs shows them) is only tested for
    existence where the host has no IOMMU groups (the lab's iommu-off
    capture): its contents were never read, so nobody's snapshot archives it
    empty, says nothing and exits as advise does, and the replay sees it."""
    nobody.require()
    with nobody.tree() as tree:
        shutil.copytree(REPO / "lab/captures/iommu-off", tree / "root", symlinks=True)
        table = tree / "root/sys/firmware/acpi/tables/DMAR"
        table.write_bytes(b"DMAR")
        table.chmod(0o400)
        out_dir = tree / "out"
        out_dir.mkdir()
        out_dir.chmod(0o777)
        archive = out_dir / "s.tar.gz"
        xml = tree / "edu.xml"  # where nobody can read it (a clone may sit in a 0700 directory)
        shutil.copy(REPO / "tests/data/domains/lab/edu.xml", xml)
        out = nobody.cli("snapshot", "-o", str(archive), "--xml", str(xml), "--host-root",
                         str(tree / "root"))
        assert "Traceback" not in out.stderr, out.stderr
        assert out.stderr == "", out.stderr
        assert out.returncode == 0, (out.stdout, out.stderr)
        with tarfile.open(archive) as tar:
            member = tar.getmember("sys/firmware/acpi/tables/DMAR")
            assert member.isfile() and member.size == 0
