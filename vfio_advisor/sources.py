"""Where domain XMLs and host trees come from: files, libvirt, snapshots.

libvirt is imported lazily: the hook must never load it (it runs inside
libvirtd and must not call back into it).
"""

from __future__ import annotations

import contextlib
import lzma
import os
import tarfile
import tempfile
import zlib
from pathlib import Path

from vfio_advisor.errors import ConnectionFailed, DomainXMLError, UsageError
from vfio_advisor.facts.domain import Domain, parse_domain_xml

DEFAULT_URI = "qemu:///system"
# An XML larger than this is not a domain definition (libvirt's own limit for
# a domain XML read by virsh is 10 MiB, VIR_FILE_READ_ALL max in virsh-domain.c).
MAX_XML_BYTES = 10 << 20


def read_domain_file(path: str) -> tuple[Domain, str]:
    """(Domain, its XML text). Raises DomainXMLError / UsageError with one line."""
    try:
        size = os.path.getsize(path)
        if size > MAX_XML_BYTES:
            raise DomainXMLError(f"{size} bytes is too large for a domain XML")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_domain_xml(data), data.decode("utf-8", "replace")


@contextlib.contextmanager
def _quiet_stderr():
    """libxml2 inside libvirt prints parse warnings ("I/O warning : failed to
    load external entity") straight to fd 2, past registerErrorHandler. The
    same error comes back as the libvirtError we report, so drop the copy."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def domains_from_libvirt(uri: str, names: list[str]) -> tuple[list[tuple[Domain, str]], list[tuple[str, str]]]:
    """Domains over a read-only connection: the named ones, or every domain
    with a PCI hostdev. Returns (domains, errors)."""
    try:
        import libvirt  # noqa: PLC0415 - lazy on purpose, see module docstring
    except ImportError:
        raise ConnectionFailed("libvirt-python is not installed") from None
    # Silence libvirt's default handler, which prints every error to stderr.
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        with _quiet_stderr():
            conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        raise ConnectionFailed(f"cannot connect to {uri}: {exc.get_error_message()}") from None
    if conn is None:
        raise ConnectionFailed(f"cannot connect to {uri}")
    out: list[tuple[Domain, str]] = []
    errors: list[tuple[str, str]] = []
    try:
        if names:
            handles = []
            for name in names:
                try:
                    handles.append(conn.lookupByName(name))
                except libvirt.libvirtError as exc:
                    errors.append((name, exc.get_error_message()))
        else:
            handles = conn.listAllDomains(0)
        for dom in handles:
            try:
                # Running domains give their live XML, with the addresses libvirt assigned.
                xml = dom.XMLDesc(0)
            except libvirt.libvirtError as exc:
                # Domain gone between list and read.
                errors.append((dom.name(), exc.get_error_message()))
                continue
            try:
                domain = parse_domain_xml(xml)
            except DomainXMLError as exc:
                errors.append((dom.name(), str(exc)))
                continue
            if names or domain.hostdevs:
                out.append((domain, xml))
    finally:
        conn.close()
    out.sort(key=lambda d: d[0].name)
    return out, errors


# A snapshot is untrusted input (it comes with a bug report). Bounds on it:
MAX_MEMBERS = 200_000
MAX_BYTES = 1 << 30
# After the end-of-archive blocks only padding follows: tar pads to its record
# size (GNU tar's default 20 x 512 bytes, -b up to a few MiB). More than this
# is not padding, and decompressing it would be unbounded work.
MAX_TRAILER = 16 << 20


def _extract_snapshot(tar: tarfile.TarFile, dest: str) -> None:
    """Unpack files and directories first, symlinks last.

    Written this way, no path is ever resolved through a symlink from the
    archive while extracting, whatever chains of links it holds; names with
    "..", absolute names and links that leave the tree are refused. (Python
    3.11.2, Debian 12's, has no tarfile data_filter.) A name may appear once
    (a directory may repeat): tar(1) would let the later entry replace the
    earlier one, which no snapshot written by `vfio-advisor snapshot` needs.
    """
    root = os.path.realpath(dest)
    links: list[tuple[str, str, str]] = []  # (name, path, link text)
    seen: dict[str, bool] = {}  # name -> is a directory
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise UsageError(f"snapshot has more than {MAX_MEMBERS} entries")
        name = os.path.normpath(member.name)
        if os.path.isabs(member.name) or name == ".." or name.startswith("../") or "\0" in name:
            raise UsageError(f"snapshot entry {member.name[:80]!r} leaves the snapshot")
        if name == ".":
            continue
        if name in seen and not (seen[name] and member.isdir()):
            raise UsageError(f"snapshot has two entries named {name[:80]!r}")
        seen[name] = member.isdir()
        target = os.path.join(root, name)
        try:
            if member.issym():
                link = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
                if os.path.isabs(member.linkname) or link == ".." or link.startswith("../"):
                    raise UsageError(f"snapshot link {member.name[:80]!r} points outside the snapshot")
                links.append((name, target, member.linkname))
            elif member.isdir():
                os.makedirs(target, mode=0o755, exist_ok=True)
            elif member.isfile():
                total += member.size
                if total > MAX_BYTES:
                    raise UsageError("snapshot unpacks to more than 1 GiB")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                source = tar.extractfile(member)
                with open(target, "xb") as out:
                    out.write(source.read() if source else b"")
            # devices, fifos and hard links have no place in a host tree
            # (sysfs and procfs have none): skipped, never created.
        except OSError as exc:
            # A file where a directory must go (a, then a/b), and the like.
            # Named by the entry, not by the temporary directory.
            raise UsageError(f"snapshot entry {member.name[:80]!r} cannot be unpacked: "
                             f"{exc.strerror or exc}") from None
    _check_trailer(tar)
    # A link below another link would be created through it: "q" -> "../.."
    # in d1/d2 and "e" -> "d1/d2/q/.." each stay inside by name, yet e
    # resolves to the parent of the tree, and a link "e/x" would be written
    # there. `snapshot` never archives a member below a link (snapshot.py,
    # _canonical), so such an archive is refused before any link is made.
    link_names = {name for name, _, _ in links}
    for name, _, _ in links:
        parent = os.path.dirname(name)
        while parent:
            if parent in link_names:
                raise UsageError(f"snapshot link {name[:80]!r} sits below the link {parent[:80]!r}")
            parent = os.path.dirname(parent)
    for _, target, linkname in links:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            os.symlink(linkname, target)
    # Links through links can still leave the tree (a -> ".", then a/x -> "../etc"):
    # drop every link whose resolved target is outside, until none is.
    changed = True
    while changed:
        changed = False
        for _, target, _ in links:
            if os.path.islink(target):
                real = os.path.realpath(target)
                if real != root and not real.startswith(root + os.sep):
                    os.unlink(target)
                    changed = True


def _check_trailer(tar: tarfile.TarFile) -> None:
    """Read the compressed stream to its end. tarfile stops at the
    end-of-archive blocks, before gzip's trailer, so a damaged archive whose
    damage decompresses (bytes changed inside a stored deflate block) would
    replay silently with wrong contents; gzip.GzipFile checks CRC-32 and
    ISIZE (RFC 1952, section 2.3.1) only at the end of the member, and raises
    BadGzipFile there (bz2 and xz check theirs at the end too)."""
    stream = tar.fileobj
    left = MAX_TRAILER
    while True:
        chunk = stream.read(min(1 << 20, left + 1))
        if not chunk:
            return
        left -= len(chunk)
        if left < 0:
            raise UsageError(f"snapshot has more than {MAX_TRAILER >> 20} MiB after the end of the archive")


# Errors a damaged compressed stream raises from tarfile and its decompressors:
# gzip.BadGzipFile is an OSError, a truncated stream an EOFError, and a bad
# deflate block a zlib.error (which is neither).
_DAMAGED = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def open_host_root(path: str) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """A directory to use as host root: `path` itself, or a snapshot unpacked."""
    if os.path.isdir(path):
        return path, None
    if not os.path.exists(path):
        raise UsageError(f"host root {path} does not exist")
    try:
        is_tar = tarfile.is_tarfile(path)
    except _DAMAGED as exc:
        # is_tarfile catches TarError only; a gzip header without a body gets here.
        raise UsageError(f"cannot unpack snapshot {path}: {_reason(exc)}") from None
    if not is_tar:
        if _compressed(path):
            raise UsageError(f"cannot unpack snapshot {path}: it is compressed but damaged, "
                             "or holds no tar archive")
        raise UsageError(f"host root {path} is neither a directory nor a snapshot (.tar.gz)")
    tmp = tempfile.TemporaryDirectory(prefix="vfio-advisor-")
    try:
        with tarfile.open(path) as tar:
            _extract_snapshot(tar, tmp.name)
    except _DAMAGED as exc:
        tmp.cleanup()
        raise UsageError(f"cannot unpack snapshot {path}: {_reason(exc)}") from None
    except UsageError:
        tmp.cleanup()
        raise
    return tmp.name, tmp


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _compressed(path: str) -> bool:
    """gzip (1f 8b), bzip2 ("BZh") or xz (fd "7zXZ") magic at the start."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00"


def snapshot_domains(root: str) -> list[str]:
    """Domain XMLs stored in a snapshot (domains/*.xml), if any."""
    d = Path(root) / "domains"
    return sorted(str(p) for p in d.glob("*.xml")) if d.is_dir() else []
