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
    # "p" leaves the tree by its name already: the archive is refused, and
    # the file below it is never written outside.
    with pytest.raises(UsageError, match="snapshot link 'p' points outside the snapshot"):
        open_host_root(str(evil))
    assert list(outside.iterdir()) == []


def test_snapshot_link_through_link_cannot_write_outside(tmp_path, monkeypatch):
    """Each link stays inside by its name, but "e" resolves through "q" to the
    parent of the tree: a link "e/x" would be created there. Refused before
    any link is made."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    evil = tmp_path / "evil.tar.gz"
    _tar(evil, [("d1/d2/q", "../..", b""), ("e", "d1/d2/q/..", b""), ("e/planted", "x", b"")])
    with pytest.raises(UsageError, match="snapshot link 'e/planted' sits below the link 'e'"):
        open_host_root(str(evil))
    assert not os.path.lexists(tmp_path / "t" / "planted")
    assert os.listdir(tmp_path / "t") == []  # the unpacked copy is removed


def test_snapshot_chain_resolving_outside_is_dropped(tmp_path):
    """c -> "a/../proc" is "proc" by its name, but the kernel resolves a first
    (a -> ".", the tree's root) and then "..": the root's parent. Dropped."""
    snap = tmp_path / "s.tar.gz"
    _tar(snap, [("proc/cmdline", None, b"ro\n"), ("a", ".", b""), ("b/x", "../../y", b"")])
    with pytest.raises(UsageError, match="points outside"):
        open_host_root(str(snap))
    _tar(snap, [("proc/cmdline", None, b"ro\n"), ("a", ".", b""), ("c", "a/../proc", b"")])
    root, tmp = open_host_root(str(snap))
    try:
        assert not os.path.lexists(os.path.join(root, "c"))
        assert os.readlink(os.path.join(root, "a")) == "."  # inside: kept
        assert open(os.path.join(root, "proc/cmdline")).read() == "ro\n"
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                real = os.path.realpath(os.path.join(dirpath, name))
                assert real.startswith(os.path.realpath(root)), (name, real)
    finally:
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


# --- hard links, devices, duplicate names, damaged gzip, size limits ----------

def _tar_infos(path: Path, infos: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in infos:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)


def _info(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "", **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def test_hard_links_are_never_created(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("host file")
    snap = tmp_path / "s.tar.gz"
    _tar_infos(snap, [
        (_info("proc/cmdline"), b"ro\n"),
        (_info("sys/inside", tarfile.LNKTYPE, "proc/cmdline"), None),
        (_info("sys/absolute", tarfile.LNKTYPE, str(victim)), None),
        (_info("sys/climbing", tarfile.LNKTYPE, "../" * 12 + os.path.relpath(victim, "/")), None),
    ])
    root, tmp = open_host_root(str(snap))
    try:
        assert sorted(os.listdir(root)) == ["proc"]  # sys/ held only links: nothing made
        assert os.stat(os.path.join(root, "proc/cmdline")).st_nlink == 1
    finally:
        tmp.cleanup()
    assert victim.read_text() == "host file" and victim.stat().st_nlink == 1


def test_hard_link_then_file_of_that_name_is_refused(tmp_path):
    """The classic write-through: a hard link to a host file, then a file of
    the same name whose contents would land in the host file."""
    victim = tmp_path / "victim"
    victim.write_text("host file")
    snap = tmp_path / "s.tar.gz"
    _tar_infos(snap, [(_info("proc/cmdline", tarfile.LNKTYPE, str(victim)), None),
                      (_info("proc/cmdline"), b"owned\n")])
    with pytest.raises(UsageError, match="two entries named 'proc/cmdline'"):
        open_host_root(str(snap))
    assert victim.read_text() == "host file" and victim.stat().st_nlink == 1


def test_device_nodes_and_fifos_are_never_created(tmp_path):
    import stat

    snap = tmp_path / "s.tar.gz"
    _tar_infos(snap, [
        (_info("proc/cmdline"), b"ro\n"),
        (_info("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1), None),
        (_info("sys/bus/pci/devices/0000:01:00.0/config", tarfile.BLKTYPE, devmajor=8, devminor=0), None),
        (_info("proc/interrupts", tarfile.FIFOTYPE), None),
    ])
    root, tmp = open_host_root(str(snap))
    try:
        kinds = []
        for dirpath, dirs, files in os.walk(root):
            for name in files:
                mode = os.lstat(os.path.join(dirpath, name)).st_mode
                kinds.append((name, stat.S_ISREG(mode)))
        assert kinds == [("cmdline", True)]
        assert not os.path.lexists(os.path.join(root, "dev/mem"))
        assert not os.path.lexists(os.path.join(root, "proc/interrupts"))
    finally:
        tmp.cleanup()


@pytest.mark.parametrize("first, second", [
    ((tarfile.REGTYPE, ""), (tarfile.REGTYPE, "")),
    ((tarfile.REGTYPE, ""), (tarfile.SYMTYPE, "cmdline")),
    ((tarfile.SYMTYPE, "cmdline"), (tarfile.REGTYPE, "")),
    ((tarfile.SYMTYPE, "cmdline"), (tarfile.SYMTYPE, "other")),
    ((tarfile.DIRTYPE, ""), (tarfile.REGTYPE, "")),
    ((tarfile.REGTYPE, ""), (tarfile.DIRTYPE, "")),
])
def test_duplicate_names_refused(tmp_path, first, second):
    snap = tmp_path / "s.tar.gz"
    infos = [(_info("proc/cmdline"), b"ro\n")]
    for type_, link in (first, second):
        infos.append((_info("proc/x", type_, link), b"data\n" if type_ == tarfile.REGTYPE else None))
    _tar_infos(snap, infos)
    with pytest.raises(UsageError, match="two entries named 'proc/x'"):
        open_host_root(str(snap))


def test_repeated_directory_is_fine(tmp_path):
    snap = tmp_path / "s.tar.gz"
    _tar_infos(snap, [(_info("proc", tarfile.DIRTYPE), None), (_info("proc/", tarfile.DIRTYPE), None),
                      (_info("proc/cmdline"), b"ro\n")])
    root, tmp = open_host_root(str(snap))
    try:
        assert open(os.path.join(root, "proc/cmdline")).read() == "ro\n"
    finally:
        tmp.cleanup()


def test_file_below_a_file_is_one_line_naming_the_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    snap = tmp_path / "s.tar.gz"
    _tar_infos(snap, [(_info("proc"), b"a file\n"), (_info("proc/cmdline"), b"ro\n")])
    with pytest.raises(UsageError) as err:
        open_host_root(str(snap))
    assert str(err.value).startswith("snapshot entry 'proc/cmdline' cannot be unpacked: ")
    assert str(tmp_path / "t") not in str(err.value)  # not the temporary directory's name
    assert os.listdir(tmp_path / "t") == []


def _good_snapshot() -> bytes:
    """A small archive; its file data is random, so deflate stores it
    (RFC 1951 stored blocks) and a changed byte there still decompresses:
    only gzip's CRC-32 can tell."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [("proc/cmdline", b"ro quiet\n"), ("sys/blob", os.urandom(4000))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _damage(kind: str, data: bytes) -> bytes:
    b = bytearray(data)
    if kind == "truncated":
        return bytes(b[: len(b) // 2])
    if kind == "header-only":
        return bytes(b[:10])
    if kind == "stored-data-changed":
        for i in range(1500, 1540):  # inside sys/blob's stored block
            b[i] ^= 0xFF
    elif kind == "crc":
        b[-8] ^= 0xFF
    elif kind == "isize":
        b[-1] ^= 0xFF
    elif kind == "deflate-garbage":
        b[10:] = os.urandom(len(b) - 10)
    return bytes(b)


@pytest.mark.parametrize("kind", ["truncated", "header-only", "stored-data-changed", "crc", "isize",
                                  "deflate-garbage"])
def test_damaged_gzip_is_one_line(tmp_path, kind):
    snap = tmp_path / "damaged.tar.gz"
    snap.write_bytes(_damage(kind, _good_snapshot()))
    private = tmp_path / "t"
    private.mkdir()
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "advise", "--host-root", str(snap)],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, NO_COLOR="1", TMPDIR=str(private)))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"vfio-advisor: cannot unpack snapshot {snap}: "), line
    assert os.listdir(private) == []  # nothing left unpacked


def test_undamaged_control_unpacks(tmp_path):
    snap = tmp_path / "good.tar.gz"
    snap.write_bytes(_good_snapshot())
    root, tmp = open_host_root(str(snap))
    try:
        assert open(os.path.join(root, "proc/cmdline")).read() == "ro quiet\n"
    finally:
        tmp.cleanup()


def test_member_count_limit(tmp_path):
    """MAX_MEMBERS + 1 entries (one directory header repeated: 100 MB of tar,
    ~100 KB of gzip) are refused."""
    import gzip

    from vfio_advisor.sources import MAX_MEMBERS

    header = _info("d/", tarfile.DIRTYPE, mode=0o755).tobuf(tarfile.USTAR_FORMAT)
    snap = tmp_path / "many.tar.gz"
    snap.write_bytes(gzip.compress(header * (MAX_MEMBERS + 1) + bytes(1024), compresslevel=1))
    with pytest.raises(UsageError, match=f"more than {MAX_MEMBERS} entries"):
        open_host_root(str(snap))
    snap.write_bytes(gzip.compress(header * 1000 + bytes(1024)))  # control
    _, tmp = open_host_root(str(snap))
    tmp.cleanup()


def test_byte_limit_counts_every_member(tmp_path):
    """GNU tar's sparse members give honest sizes in a small archive: 1 KiB,
    then a 1 GiB hole. Each alone is within the 1 GiB bound, together they
    are not, and the second is refused before a byte of it is written."""
    import shutil

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "src"
    (src / "sys").mkdir(parents=True)
    (src / "sys/a").write_bytes(b"x" * 1024)
    with open(src / "sys/hole", "wb") as f:
        f.truncate(1 << 30)
    snap = tmp_path / "big.tar.gz"
    subprocess.run(["tar", "--sparse", "-czf", str(snap), "-C", str(src), "sys/a", "sys/hole"], check=True)
    assert snap.stat().st_size < 1 << 20
    with pytest.raises(UsageError, match="more than 1 GiB"):
        open_host_root(str(snap))


def test_trailing_data_limit(tmp_path):
    """More than 16 MiB after the end-of-archive blocks is not tar padding."""
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("proc/cmdline")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"ro\n"))
    snap = tmp_path / "trailer.tar.gz"
    snap.write_bytes(gzip.compress(raw.getvalue() + bytes(17 << 20), compresslevel=1))
    with pytest.raises(UsageError, match="more than 16 MiB after the end of the archive"):
        open_host_root(str(snap))
    snap.write_bytes(gzip.compress(raw.getvalue() + bytes(1 << 20)))  # ordinary padding: fine
    _, tmp = open_host_root(str(snap))
    tmp.cleanup()
