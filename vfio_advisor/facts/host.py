"""HostRoot: the one place that opens files under /proc and /sys.

Every fact about the host is read through a HostRoot, so pointing it at a
recorded tree (`--host-root DIR`, a snapshot, a test fixture) replays that
host without patching `open` (the psutil PROCFS_PATH idea, extended to sysfs).

OSError is translated into FactUnavailable here and nowhere else.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from vfio_advisor.errors import FactUnavailable

if TYPE_CHECKING:
    from typing import Callable

# A full PCIe config space is 4096 bytes; nothing we read is larger except
# /proc/interrupts, which is read with its own limit.
_DEFAULT_LIMIT = 1 << 16
# /proc/interrupts on a 256-CPU host with thousands of vectors is a few MiB.
INTERRUPTS_LIMIT = 64 << 20


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "missing"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (run as root for full facts)"
    return exc.strerror or type(exc).__name__


def read_in_pieces(f, limit: int) -> bytes:
    """Up to `limit` bytes of an open file, in reads of at most 1 MiB:
    f.read(n) allocates n bytes up front, procfs reports a size of 0 (so the
    64 MiB bound on /proc/interrupts cannot be sized first), and procfs
    sysctl files refuse one read(2) larger than KMALLOC_MAX_SIZE with ENOMEM
    (fs/proc/proc_sysctl.c proc_sys_call_handler)."""
    chunks, size = [], 0
    while size < limit:
        chunk = f.read(min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class HostRoot:
    """Reads files relative to a root directory ("/" on a live host).

    `recorded` collects every relative path that was looked at, so
    `snapshot` can archive exactly what the tool reads.
    """

    def __init__(self, path: str | os.PathLike[str] = "/", *, record: bool = False):
        # Plain strings, not pathlib: the hook imports this module on every VM
        # start, and pathlib (with urllib.parse and ipaddress) costs ~6 ms.
        self.root = os.fspath(path)
        self.recorded: set[str] | None = set() if record else None
        # Of those, the files whose contents were read (or tried): a path
        # only tested for existence or listed is archived even when it
        # cannot be read, as an empty file (snapshot.write_snapshot).
        self.contents_read: set[str] | None = set() if record else None
        # Directories whose listing the OS refused (a 0700 directory for a
        # user who is not root), with the reason: what they hold was never
        # recorded, so a snapshot names them rather than archive them as
        # if they held only what other reads reached.
        self.unlisted: dict[str, str] | None = {} if record else None

    def __repr__(self) -> str:
        return f"HostRoot({str(self.root)!r})"

    def _path(self, rel: str, contents: bool = False) -> str:
        rel = rel.lstrip("/")
        if self.recorded is not None:
            self.recorded.add(rel)
            if contents:
                self.contents_read.add(rel)
        return os.path.join(self.root, rel)

    def read_bytes(self, rel: str, limit: int = _DEFAULT_LIMIT) -> bytes:
        try:
            with open(self._path(rel, contents=True), "rb") as f:
                if limit <= _DEFAULT_LIMIT:
                    return f.read(limit)
                return read_in_pieces(f, limit)
        except OSError as exc:
            raise FactUnavailable(rel, _reason(exc)) from None

    def read_once(self, rel: str, size: int) -> bytes:
        """One read(2) of at most `size` bytes, unbuffered: half the cost of
        a buffered open() for a one-value sysfs attribute, which kernfs shows
        whole in one read (fs/kernfs/file.c, kernfs_seq_show)."""
        try:
            fd = os.open(self._path(rel, contents=True), os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.read(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise FactUnavailable(rel, _reason(exc)) from None

    def open_kept(self, rel: str, directory: bool = False) -> int:
        """A descriptor on `rel` for a reader that keeps it and reads it again
        (the daemon's Sampler: a sysfs attribute re-read with pread at offset
        0 shows its current value, kernfs regenerates it per read; a kept
        directory descriptor lists the directory as it is now). Recorded as
        any read; the caller closes it (os.close)."""
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
        try:
            return os.open(self._path(rel, contents=True), flags)
        except OSError as exc:
            raise FactUnavailable(rel, _reason(exc)) from None

    @staticmethod
    def list_kept(fd: int) -> list[str]:
        """The names in a directory kept open (open_kept(directory=True)),
        unsorted; os.listdir(fd) rewinds a duplicate of it. OSError passes
        through: the caller drops the descriptor."""
        return os.listdir(fd)

    def root_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the root when it is a symlink, which a replay
        may swap atomically (rename(2) replaces a symlink, never a non-empty
        directory): descriptors kept under it would go on reading the old
        tree. None for "/" and for a plain directory (no stat per sample)."""
        if self.root in ("/", "") or not os.path.islink(self.root):
            return None
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def read_text(self, rel: str, limit: int = _DEFAULT_LIMIT) -> str:
        # sysfs and procfs text is ASCII; a damaged recording must not crash us.
        return self.read_bytes(rel, limit).decode("utf-8", "replace")

    def read_value(self, rel: str) -> str:
        """A one-value sysfs attribute, stripped."""
        return self.read_text(rel, 4096).strip()

    def read_link_name(self, rel: str) -> str:
        """The last component of a symlink's target (driver, iommu_group)."""
        try:
            return os.path.basename(os.readlink(self._path(rel)))
        except OSError as exc:
            raise FactUnavailable(rel, _reason(exc)) from None

    def list_dir(self, rel: str, keep: Callable[[str], object] | None = None) -> list[str]:
        """The names in a directory, sorted; with `keep`, only those it
        accepts, and only they are recorded (a PCI device's directory also
        holds its resource<N> BAR files, which a snapshot must never read)."""
        try:
            # sysfs and procfs have no dot entries; a recorded tree keeps an
            # empty directory (a PCI driver with no device bound) in git
            # through a .keep file, which is not part of the host.
            names = sorted(n for n in os.listdir(self._path(rel)) if not n.startswith(".")
                           and (keep is None or keep(n)))
        except OSError as exc:
            if self.unlisted is not None and exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                self.unlisted[rel.strip("/")] = exc.strerror or type(exc).__name__
            raise FactUnavailable(rel, _reason(exc)) from None
        if self.recorded is not None:
            self.recorded.update(f"{rel.strip('/')}/{name}" for name in names)
        return names

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self._path(rel))

    def resolve(self, rel: str) -> str:
        """The path of `rel` with symlinks resolved, relative to the root.

        sysfs device links are relative (../../../devices/pci0000:00/...), so
        they resolve inside a recorded tree as they do on the live host.
        """
        path = self._path(rel)
        if not os.path.lexists(path):
            raise FactUnavailable(rel, "missing")
        real = os.path.realpath(path)
        root = os.path.realpath(self.root)
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise FactUnavailable(rel, "symlink points outside the host root")
        resolved = os.path.relpath(real, root)
        if self.recorded is not None:
            # Record every link on the way, so a snapshot can rebuild the chain.
            for text in (rel.strip("/"), resolved):
                parts = text.split("/")
                for i in range(1, len(parts) + 1):
                    self.recorded.add("/".join(parts[:i]))
        return resolved
