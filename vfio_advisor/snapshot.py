"""`vfio-advisor snapshot`: archive exactly the host files the tool read, plus
the domain XMLs, in the layout `--host-root` replays (a tar.gz whose members
are proc/..., sys/..., domains/<name>.xml and SNAPSHOT.txt)."""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
import time
from pathlib import Path

from vfio_advisor import __version__
from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import HostRoot, read_in_pieces
from vfio_advisor.sources import SNAPSHOT_NOTE

# The kernel's release as it reports it (procfs, kernel/sysctl.c "osrelease").
KERNEL_RELEASE = "proc/sys/kernel/osrelease"


def tree_kernel(host: HostRoot) -> str:
    """The release of the kernel whose tree `host` reads: the running one
    for /, the recorded one for a --host-root tree, not this machine's."""
    try:
        return host.read_value(KERNEL_RELEASE) or "unknown (empty)"
    except FactUnavailable as exc:
        return f"unknown ({exc})"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _lstat_mode(path: Path) -> int | None:
    """lstat's st_mode, None when the path does not exist. Any other
    failure raises: EACCES on a directory the user cannot enter (search
    permission, path_resolution(7)) says nothing of whether the path is
    there, and Path.is_symlink (3.11) raises it while os.path.lexists takes
    it for absence."""
    try:
        return os.lstat(path).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def _canonical(root: Path, rel: str) -> list[str]:
    """Paths to archive for one path read: every symlink met on the way (as a
    link), then the final target by its symlink-free path. sysfs reaches
    devices through links (bus/pci/devices/<BDF> -> ../../../devices/...), and
    a tar member must not sit below a symlink member. OSError (not ENOENT):
    a directory on the way that could not be entered."""
    real_root = os.path.realpath(root)
    out: list[str] = []
    cur = ""
    for part in Path(rel).parts:
        cand = os.path.join(cur, part) if cur else part
        full = root / cand
        mode = _lstat_mode(full)
        if mode is not None and stat.S_ISLNK(mode):
            out.append(cand)
            target = os.path.realpath(full)
            if target != real_root and not target.startswith(real_root.rstrip("/") + "/"):
                return out  # points outside the root: keep the link only
            cur = os.path.relpath(target, real_root)
        else:
            cur = cand
    if cur and _lstat_mode(root / cur) is not None:
        out.append(cur)
    return out


def _read_whole(path: Path, limit: int = 64 << 20) -> bytes:
    """A file's bytes, up to `limit`, in reads of 1 MiB (read_in_pieces:
    one f.read(64 MiB) of proc/sys/kernel/osrelease fails with ENOMEM)."""
    with open(path, "rb", buffering=0) as f:
        return read_in_pieces(f, limit)


def domain_members(domains: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(member name, XML) for each domain: domains/<safe name>.xml, the name
    folded to characters any file system keeps. The replay refuses an archive
    with two members of one name, and the folding maps distinct names to one
    ("win 11" and "win_11"): a later one gets -2, -3, ... (A domain given
    twice with the same XML reaches this once: cmd_snapshot keeps one.)"""
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    for name, xml in domains:
        safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name) or "domain"
        member, n = f"domains/{safe}.xml", 1
        while member in used:
            n += 1
            member = f"domains/{safe}-{n}.xml"
        used.add(member)
        out.append((member, xml))
    return out


def write_snapshot(out_path: str, host: HostRoot,
                   domains: list[tuple[str, str]]) -> tuple[int, list[tuple[str, str]]]:
    """Write the archive. `host` must have recorded its reads. Returns the
    member count and (path, reason) for each file whose contents were read
    (or tried) but could not be archived (a 0600 file for a user who is not
    root), each path looked at under a directory that could not be entered,
    and each directory that could not be listed."""
    if host.recorded is None:
        raise RuntimeError("programming error: snapshot needs a recording HostRoot")
    root = Path(host.root)
    kernel = tree_kernel(host)  # read first: the archive keeps the file it came from
    count = 0
    unreadable: list[tuple[str, str]] = []
    entries: set[str] = set()
    blocked: dict[str, str] = {}
    for rel in host.recorded:
        try:
            entries.update(_canonical(root, rel))
        except OSError as exc:
            # Under a directory this user cannot enter: the replay would call
            # it missing. Named like a file that could not be read.
            blocked[rel] = exc.strerror or type(exc).__name__
    for rel, why in (host.unlisted or {}).items():
        # Listed but refused: the archive would hold only the entries other
        # reads reached, and the replay would list those as all there is.
        blocked.setdefault(rel, f"{why} (its entries could not be listed)")
    unreadable.extend(sorted(blocked.items()))
    with tarfile.open(out_path, "w:gz") as tar:
        dirs_done: set[str] = set()

        def add_dir(name: str) -> None:
            if name not in dirs_done:
                dirs_done.add(name)
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)

        for rel in sorted(entries):
            path = root / rel
            # Parent directories first, so links and files have somewhere to go.
            parts = Path(rel).parts
            for i in range(1, len(parts)):
                add_dir(str(Path(*parts[:i])))
            if path.is_symlink():
                info = tarfile.TarInfo(rel)
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif path.is_dir():
                add_dir(rel)
            elif path.is_file():
                try:
                    # sysfs reports 4096 for every attribute; read the real bytes.
                    data = _read_whole(path)
                except OSError as exc:
                    if rel not in host.contents_read:
                        # Only tested for existence or listed (an ACPI table,
                        # 0400): its contents were never used, so an empty
                        # file keeps what was used, that it is there.
                        data = b""
                    else:
                        # The replay would call it missing, not unreadable:
                        # the caller says so, and SNAPSHOT.txt keeps the reason.
                        unreadable.append((rel, exc.strerror or str(exc)))
                        continue
                _add_bytes(tar, rel, data)
            else:
                continue
            count += 1
        for member, xml in domain_members(domains):
            _add_bytes(tar, member, xml.encode("utf-8"), 0o600)
            count += 1
        _add_bytes(tar, SNAPSHOT_NOTE, (
            f"vfio-advisor {__version__} snapshot\n"
            f"taken: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
            f"host root: {root}\n"
            f"kernel: {kernel}\n"
            f"as root: {os.geteuid() == 0}\n"
            + "".join(f"not archived: {rel}: {why}\n" for rel, why in unreadable)
            + "replay: vfio-advisor advise --host-root THIS.tar.gz\n").encode())
    return count, unreadable
