"""Snapshots: archive members can never write or point outside the tree; a snapshot of the live host keeps its device files.

Filed by subject from a code review's regressions: each test reproduces one
defect found."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vfio_advisor.errors import UsageError
from vfio_advisor.sources import open_host_root


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, NO_COLOR="1"), **kw)


def _tar(path: Path, members: list[tuple[str, str | None, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, link, data in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_snapshot_link_chains_cannot_write_or_point_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = tmp_path / "evil.tar.gz"
    rel = os.path.relpath(outside, "/")  # deep enough to climb out of any temp dir
    _tar(evil, [
        ("d1/d2/q", "../x", b""),
        ("p", "d1/d2/q/../../../" + "../" * 12 + rel, b""),
        ("p/owned.txt", None, b"written outside"),
        ("a", ".", b""),
        ("a/x", "../" + "../" * 12 + rel, b""),
    ])
    try:
        root, tmp = open_host_root(str(evil))
    except UsageError:
        root, tmp = None, None  # refusing the archive is fine too
    try:
        assert list(outside.iterdir()) == []
        if root:
            for dirpath, dirs, files in os.walk(root):
                for name in dirs + files:
                    real = os.path.realpath(os.path.join(dirpath, name))
                    assert real.startswith(os.path.realpath(root)), (name, real)
    finally:
        if tmp:
            tmp.cleanup()


def test_snapshot_refuses_dotdot_and_absolute_names(tmp_path):
    for name in ("../escape", "/etc/escape", "a/../../escape"):
        bad = tmp_path / "bad.tar.gz"
        _tar(bad, [(name, None, b"x")])
        with pytest.raises(UsageError):
            open_host_root(str(bad))


def test_snapshot_of_the_live_host_keeps_device_files(tmp_path):
    devices = sorted(os.listdir("/sys/bus/pci/devices")) if os.path.isdir("/sys/bus/pci/devices") else []
    if not devices:
        pytest.skip("no PCI devices on this machine")
    bdf = devices[-1]
    d, b, sf = bdf.split(":")
    s, f = sf.split(".")
    xml = tmp_path / "d.xml"
    xml.write_text(f"<domain type='kvm'><name>d</name><os><type machine='q35'>hvm</type></os><devices>"
                   f"<hostdev mode='subsystem' type='pci'><source><address domain='0x{d}' bus='0x{b}' "
                   f"slot='0x{s}' function='0x{f}'/></source></hostdev></devices></domain>")
    snap = tmp_path / "live.tar.gz"
    out = cli("snapshot", "-o", str(snap), "--xml", str(xml))
    assert out.returncode == 0, out.stderr
    with tarfile.open(snap) as tar:
        names = tar.getnames()
    assert any(n.endswith(f"/{bdf}/config") for n in names), names[:20]
    assert any(n.endswith(f"/{bdf}/vendor") for n in names)
