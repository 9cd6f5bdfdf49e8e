"""Snapshots: archive members can never write or point outside the tree; a snapshot of the live host keeps its device files.

Filed by subject from a code review's regressions: each test reproduces one
defect found."""

from __future__ import annotations

import gzip
import io
import os
import re
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


# --- extended headers tarfile reads whole before a member reaches us ----------
#
# CPython 3.11's tarfile (Lib/tarfile.py, Debian 12's 3.11.2) reads a pax
# header ('x'), a GNU long name or link ('L', 'K') in one read of the size
# the header claims, GNU sparse extension blocks and a sparse 1.0 map for as
# long as they say more follow, each nested header by recursion: all before
# TarFile.next returns a member. The archives below are small gzip streams
# (a 16 MiB run of zeros compresses to 16 KiB, and a gzip file may hold many
# members, RFC 1952 section 2.2) that claim gigabytes there. Each runs
# through the real CLI in a child whose address space is capped (AS_CAP): a
# regression fails with a MemoryError instead of taking the machine's
# memory, and os.wait4 gives that child's own peak RSS (_MEASURE).

AS_CAP = 1 << 30
PEAK_RSS = 200 << 20  # a correctness bound against a gigabyte allocation, not a speed target
CLAIM = 2 << 30


def _header(name: str, type_: bytes, size: int, fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = type_, size
    return info.tobuf(fmt)


def _file(name: str, data: bytes) -> bytes:
    pad = -len(data) % 512
    return _header(name, tarfile.REGTYPE, len(data)) + data + bytes(pad)


def _repeated(block: bytes, total: int) -> bytes:
    """`total` bytes of `block` repeated, as concatenated gzip members."""
    chunk = 16 << 20
    member = gzip.compress(block * (chunk // len(block)), compresslevel=9)
    return member * (total // chunk)


def _long_pax_member(name: str) -> bytes:
    """A pax header (512-byte header + its records) followed by the ustar
    header it belongs to, as tarfile's PAX format writes them."""
    return tarfile.TarInfo(name).tobuf(tarfile.PAX_FORMAT)


# Linux counts the memory a child inherits at fork toward its peak RSS (exec
# keeps the old mm's high-water mark in signal->maxrss: fs/exec.c
# exec_mmap, setmax_mm_hiwater_rss), so a child of pytest would report
# pytest's size. A small Python in between forks the CLI and reads its
# rusage with os.wait4; the rlimits it sets are inherited.
_MEASURE = """
import os, resource, sys
cap = int(sys.argv[1])
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
if hard != resource.RLIM_INFINITY:
    cap = min(cap, hard)  # under `prlimit --as=...` already: keep the lower cap
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
resource.setrlimit(resource.RLIMIT_CPU, (120, 120))  # instead of a timeout: wait4 blocks
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "vfio_advisor", *sys.argv[3:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[2], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
"""


def _advise_measured(snap: Path, tmp_path: Path):
    """(exit code, stdout, stderr, peak RSS in bytes, private TMPDIR) of
    `vfio-advisor advise --host-root snap`, run with its address space
    capped at AS_CAP."""
    private = tmp_path / "t"
    private.mkdir(exist_ok=True)
    result = tmp_path / "measured"
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(AS_CAP), str(result),
                          "advise", "--host-root", str(snap)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, NO_COLOR="1", TMPDIR=str(private)))
    assert out.returncode == 0, out.stderr
    code, peak = map(int, result.read_text().split())
    return code, out.stdout, out.stderr, peak, private


def _assert_refused_small(snap: Path, tmp_path: Path, pattern: str) -> str:
    code, _, err, peak, private = _advise_measured(snap, tmp_path)
    assert "Traceback" not in err and "MemoryError" not in err, err[-2000:]
    assert code == 2, err
    (line,) = err.splitlines()
    assert re.fullmatch(rf"vfio-advisor: cannot unpack snapshot {re.escape(str(snap))}: {pattern}", line), line
    assert peak < PEAK_RSS, f"peak RSS {peak >> 20} MiB"
    assert os.listdir(private) == []  # nothing left unpacked
    return line


@pytest.mark.parametrize("type_, kind", [(tarfile.XHDTYPE, "pax"), (tarfile.GNUTYPE_LONGNAME, "GNU long name"),
                                         (tarfile.GNUTYPE_LONGLINK, "GNU long link")])
@pytest.mark.parametrize("before", ["nothing", "a file", "a pax header"])
def test_extended_header_claiming_2_gib_is_one_line_and_small(tmp_path, type_, kind, before):
    """The header claims 2 GiB and the stream holds 2 GiB of zeros after it.
    After a pax header the bomb is read by _proc_pax's nested fromtarfile
    (whose HeaderError handling must not swallow our message); after a file
    it is the second member, read by TarFile.next rather than TarFile's
    constructor."""
    lead = {"nothing": b"", "a file": _file("proc/cmdline", b"ro\n"),
            "a pax header": _long_pax_member("sys/" + "x" * 200)[:1024]}[before]
    name = "././@PaxHeader" if type_ == tarfile.XHDTYPE else "././@LongLink"
    snap = tmp_path / "bomb.tar.gz"
    snap.write_bytes(gzip.compress(lead + _header(name, type_, CLAIM)) + _repeated(bytes(512), CLAIM))
    assert snap.stat().st_size < 4 << 20
    at = len(lead)
    _assert_refused_small(snap, tmp_path, rf"a {kind} header \('{re.escape(name)}' at byte {at}\) claims "
                                          r"2 GiB \(limit 1 MiB\)")


def _old_gnu_sparse_header(name: str) -> bytes:
    """A GNU sparse ('S') header whose "isextended" byte (offset 482, GNU
    tar's struct oldgnu_header) says extension blocks follow."""
    buf = bytearray(_header(name, tarfile.GNUTYPE_SPARSE, 0, tarfile.GNU_FORMAT))
    buf[482] = 1
    buf[148:156] = b" " * 8
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf)


def _sparse_extension_block() -> bytes:
    """21 (offset, numbytes) pairs, then "isextended" set again (byte 504)."""
    return (b"%011o\0%011o\0" % (1, 1)) * 21 + b"\1" + bytes(7)


def test_endless_gnu_sparse_extension_blocks_are_one_line_and_small(tmp_path):
    """Each 512-byte block adds 21 (offset, size) tuples to the member's map:
    2 GiB of them would be ~10 GB of tuples."""
    snap = tmp_path / "sparse.tar.gz"
    snap.write_bytes(gzip.compress(_old_gnu_sparse_header("sys/hole"))
                     + _repeated(_sparse_extension_block(), CLAIM))
    _assert_refused_small(snap, tmp_path, r"the headers of the entry at byte 0 take more than 4 MiB")


def _sparse_10_lead(data_size: int) -> bytes:
    info = tarfile.TarInfo("sys/hole")
    info.size = data_size
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "sys/hole"}
    return info.tobuf(tarfile.PAX_FORMAT)


def test_endless_sparse_1_0_map_is_one_line_and_small(tmp_path):
    """GNU sparse 1.0 (pax records GNU.sparse.major=1, minor=0) keeps its map
    in the member's data: a count, then one number a line, read until the
    count is met. Here it claims 10**12 numbers and 2 GiB of "1\\n" follow."""
    snap = tmp_path / "sparse10.tar.gz"
    snap.write_bytes(gzip.compress(_sparse_10_lead(CLAIM) + b"1000000000000\n" + b"1\n" * 249)
                     + _repeated(b"1\n" * 256, CLAIM))
    _assert_refused_small(snap, tmp_path, r"the headers of the entry at byte 0 take more than 4 MiB")


def test_damaged_sparse_1_0_map_is_one_line(tmp_path):
    """A map without its newline: tarfile 3.11's _proc_gnusparse_10 unpacks
    buf.split(b"\\n", 1) into two names, and the ValueError escapes it."""
    snap = tmp_path / "sparse10.tar.gz"
    snap.write_bytes(gzip.compress(_sparse_10_lead(512) + b"x" * 512 + bytes(1024)))
    _assert_refused_small(snap, tmp_path, r"the headers of the entry at byte 0 are damaged \(.+\)")


def test_long_chain_of_extended_headers_is_one_line(tmp_path):
    """Each extended header reads the next one by recursion
    (TarInfo.fromtarfile -> _proc_gnulong -> fromtarfile): 2000 in a row end
    in a RecursionError at Python's limit."""
    longname = _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 9) + b"sys/long\0".ljust(512, b"\0")
    snap = tmp_path / "chain.tar.gz"
    snap.write_bytes(gzip.compress(longname * 2000 + _file("sys/x", b"1\n") + bytes(1024)))
    _assert_refused_small(snap, tmp_path, r"the entry at byte 0 has more than 8 extended headers")


def test_pax_global_header_is_refused(tmp_path):
    """tarfile copies global records into every later member, all kept in
    TarFile.members; `snapshot` never writes one."""
    snap = tmp_path / "global.tar.gz"
    with tarfile.open(snap, "w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}) as tar:
        info = tarfile.TarInfo("proc/cmdline")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"ro\n"))
    with pytest.raises(UsageError, match=r"the entry at byte 0 is a pax global header, which no snapshot holds$"):
        open_host_root(str(snap))


def test_headers_of_the_whole_archive_are_bounded(tmp_path):
    """Each pax header under 1 MiB, 40 of them over the archive's 32 MiB."""
    snap = tmp_path / "many.tar.gz"
    with tarfile.open(snap, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tar:
        for i in range(40):
            info = tarfile.TarInfo(f"sys/f{i}")
            info.pax_headers = {"comment": "c" * 1_000_000}
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UsageError, match=r"the snapshot's headers take more than 32 MiB \(reached at the "
                                         r"entry at byte \d+\)$"):
        open_host_root(str(snap))
    with tarfile.open(snap, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tar:  # control: 20
        for i in range(20):
            info = tarfile.TarInfo(f"sys/f{i}")
            info.pax_headers = {"comment": "c" * 1_000_000}
            tar.addfile(info, io.BytesIO(b""))
    _, tmp = open_host_root(str(snap))
    tmp.cleanup()


LAB = Path(__file__).resolve().parents[2] / "lab/captures/shared"
LAB_DOMAIN = Path(__file__).resolve().parents[2] / "tests/data/domains/lab/shared.xml"


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_real_snapshot_with_long_names_still_replays(tmp_path, fmt):
    """A snapshot written by `vfio-advisor snapshot` from a lab capture, with
    a file whose path is 2.7 KB long and a link to it added (pax "path" and
    "linkpath" records, or GNU 'L' and 'K' headers): it unpacks and replays
    to the same advice as the snapshot alone."""
    real = tmp_path / "real.tar.gz"
    out = cli("snapshot", "-o", str(real), "--host-root", str(LAB), "--xml", str(LAB_DOMAIN))
    assert out.returncode == 0, out.stderr
    long_name = "sys/" + "/".join(f"d{i:03d}" + "x" * 40 for i in range(60)) + "/vendor"
    snap = tmp_path / "long.tar.gz"
    with tarfile.open(real) as src, tarfile.open(snap, "w:gz", format=fmt) as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo(long_name)
        info.size = 7
        dst.addfile(info, io.BytesIO(b"0x8086\n"))
        link = tarfile.TarInfo("proc/longlink")
        link.type, link.linkname = tarfile.SYMTYPE, "../" + long_name
        dst.addfile(link)
    assert len(long_name) > 2700
    code, stdout, err, peak, private = _advise_measured(snap, tmp_path)
    expected = cli("advise", "--host-root", str(real))
    assert (code, stdout, err) == (expected.returncode, expected.stdout, expected.stderr)
    assert code in (0, 1) and "VA" in stdout, err
    assert peak < PEAK_RSS
    root, tmp = open_host_root(str(snap))
    try:
        assert open(os.path.join(root, long_name)).read() == "0x8086\n"
        assert open(os.path.join(root, "proc/longlink")).read() == "0x8086\n"
    finally:
        tmp.cleanup()


def test_large_member_is_copied_in_pieces(tmp_path):
    """A 300 MiB sparse member (GNU tar --sparse: a few bytes of archive)
    unpacks without the process ever holding it whole."""
    import shutil

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "src"
    (src / "sys").mkdir(parents=True)
    (src / "domains").mkdir()
    shutil.copy(LAB_DOMAIN, src / "domains/shared.xml")
    with open(src / "sys/hole", "wb") as f:
        f.truncate(300 << 20)
    snap = tmp_path / "hole.tar.gz"
    subprocess.run(["tar", "--sparse", "-czf", str(snap), "-C", str(src), "domains", "sys"], check=True)
    code, stdout, err, peak, _ = _advise_measured(snap, tmp_path)
    assert code in (0, 1) and "cannot unpack" not in err, err
    assert peak < PEAK_RSS, f"peak RSS {peak >> 20} MiB"


def test_tarfile_without_the_hook_is_a_clear_failure(tmp_path, monkeypatch):
    """Were TarInfo._proc_member (a private name) no longer the way
    fromtarfile processes headers, the bounds would silently not hold:
    snapshots are refused instead."""
    snap = tmp_path / "good.tar.gz"
    snap.write_bytes(_good_snapshot())

    def fromtarfile(cls, tarfile_):  # reads headers some other way
        raise AssertionError("not reached")

    monkeypatch.setattr(tarfile.TarInfo, "fromtarfile", classmethod(fromtarfile))
    with pytest.raises(UsageError, match=r"no longer reads headers through TarInfo._proc_member"):
        open_host_root(str(snap))
