"""Where domain XMLs and host trees come from: files, libvirt, snapshots.

libvirt is imported lazily: the hook must never load it (it runs inside
libvirtd and must not call back into it).
"""

from __future__ import annotations

import lzma
import os
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import NamedTuple

from vfio_advisor.errors import ConnectionFailed, DomainXMLError, UsageError, quiet_stderr
from vfio_advisor.facts.domain import Domain, parse_domain_xml

DEFAULT_URI = "qemu:///system"
# An XML larger than this is not a domain definition (libvirt's own limit for
# a domain XML read by virsh is 10 MiB, VIR_FILE_READ_ALL max in virsh-domain.c).
MAX_XML_BYTES = 10 << 20


class DomainSource(NamedTuple):
    """One domain as loaded, and where from."""

    domain: Domain
    xml: str  # the text analysed; from libvirt with inactive=True, the persistent config
    label: str  # "file:PATH", "snapshot:domains/NAME.xml", or the libvirt domain name
    persistent: bool = True
    state: str = "file"  # a file's, or libvirt's state name (STATE_NAMES)

    @property
    def from_file(self) -> bool:
        """An XML file (given, or a snapshot's), not a libvirt domain."""
        return self.label.startswith(("file:", "snapshot:"))


class Loaded(NamedTuple):
    """The domains that loaded, and one (input, one-line reason) per input
    that did not: a file that cannot be read or is no domain, a name
    libvirt or the snapshot does not know."""

    domains: list[DomainSource]
    errors: list[tuple[str, str]]


# virDomainState (libvirt include/libvirt/libvirt-domain.h), as virsh names them.
STATE_NAMES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down",
               5: "shut off", 6: "crashed", 7: "suspended (pmsuspended)"}


def read_domain_file(path: str, exact_text: bool = False) -> tuple[Domain, str]:
    """(Domain, its XML text). Raises DomainXMLError / UsageError with one line.
    `exact_text`: the text is to be edited (fix), so it must be UTF-8 as it
    is; otherwise undecodable bytes only need to be shown."""
    try:
        size = os.path.getsize(path)
        if size > MAX_XML_BYTES:
            raise DomainXMLError(f"{size} bytes is too large for a domain XML")
        with open(path, "rb") as f:
            # A pipe, /dev/stdin or a device reports size 0: the bound is
            # the read's own (one byte over tells "too large" from "just fits").
            data = f.read(MAX_XML_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_XML_BYTES:
        raise DomainXMLError(f"more than {MAX_XML_BYTES} bytes is too large for a domain XML")
    domain = parse_domain_xml(data)
    if not exact_text:
        return domain, data.decode("utf-8", "replace")
    try:
        return domain, data.decode("utf-8")
    except UnicodeDecodeError:
        raise DomainXMLError("not UTF-8 text") from None


def load_domains(files: list[str], names: list[str], uri: str | None = None,
                 host_root_dir: str | None = None, *, inactive: bool = False,
                 conn=None) -> Loaded:
    """The one loader of domains for every command: the XML `files`; or,
    with neither files nor `uri`, the domains a snapshot holds when
    `host_root_dir` is one (a snapshot replays its own domains); or libvirt
    at `uri` (default qemu:///system; `conn`: an open connection instead).
    `names` selects among them (default: every domain with a PCI hostdev
    from libvirt, every file). `inactive`: libvirt's persistent config rather
    than the live XML, with exact text (what `fix` edits)."""
    if files and (uri or conn is not None):
        raise UsageError("use either --xml or --connect, not both")
    where = "in the XML files given"
    in_snapshot = False
    if not files and not uri and conn is None and host_root_dir is not None:
        files = snapshot_domains(host_root_dir)
        where = "in the host tree's domains/"
        in_snapshot = bool(files)
        if is_snapshot_tree(host_root_dir):
            where = "in the snapshot"
            if not files:
                # A snapshot replays its own domains, never the libvirt of
                # the machine that replays it.
                return Loaded([], [(name, f"no such domain {where}") for name in names])
    if files:
        loaded: list[DomainSource] = []
        errors: list[tuple[str, str]] = []
        for path in files:
            # A snapshot's domains are named inside it: its unpacked
            # location is a temporary directory, gone after the run.
            shown = os.path.relpath(path, host_root_dir) if in_snapshot else path
            try:
                domain, xml = read_domain_file(path, exact_text=inactive)
            except DomainXMLError as exc:
                errors.append((shown, str(exc)))
                continue
            except UsageError as exc:
                errors.append((shown, str(exc).replace(f"cannot read {path}: ", "cannot read it: ", 1)))
                continue
            loaded.append(DomainSource(domain, xml, f"snapshot:{shown}" if in_snapshot else f"file:{path}"))
        if names:
            known = {d.domain.name for d in loaded}
            errors += [(name, f"no such domain {where}")
                       for name in names if name not in known]
            loaded = [d for d in loaded if d.domain.name in set(names)]
        return Loaded(loaded, errors)
    return domains_from_libvirt(uri or DEFAULT_URI, names, inactive=inactive, conn=conn)


def libvirt_module():
    try:
        import libvirt  # noqa: PLC0415 - lazy on purpose, see module docstring
    except ImportError:
        raise ConnectionFailed("libvirt-python is not installed") from None
    # Silence libvirt's default handler, which prints every error to stderr.
    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt


def domains_from_libvirt(uri: str, names: list[str], *, inactive: bool = False,
                         conn=None) -> Loaded:
    """Domains over a read-only connection (or `conn`): the named ones, or
    every domain with a PCI hostdev. `inactive`: the persistent config of a
    persistent domain (VIR_DOMAIN_XML_INACTIVE), the live XML otherwise."""
    libvirt = libvirt_module()
    own = conn is None
    if own:
        try:
            with quiet_stderr():
                conn = libvirt.openReadOnly(uri)
        except libvirt.libvirtError as exc:
            raise ConnectionFailed(f"cannot connect to {uri}: {exc.get_error_message()}") from None
        if conn is None:
            raise ConnectionFailed(f"cannot connect to {uri}")
    out: list[DomainSource] = []
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
                persistent = bool(dom.isPersistent())
                # Running domains give their live XML, with the addresses
                # libvirt assigned; `fix` changes the persistent config, which
                # a transient domain does not have.
                flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive and persistent else 0
                xml = dom.XMLDesc(flags)
                state = STATE_NAMES.get(dom.state()[0], "unknown")
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
                out.append(DomainSource(domain, xml, dom.name(), persistent, state))
    finally:
        if own:
            conn.close()
    out.sort(key=lambda d: d.domain.name)
    return Loaded(out, errors)


# A snapshot is untrusted input (it comes with a bug report). Bounds on it:
MAX_MEMBERS = 200_000
MAX_BYTES = 1 << 30
# After the end-of-archive blocks only padding follows: tar pads to its record
# size (GNU tar's default 20 x 512 bytes, -b up to a few MiB). More than this
# is not padding, and decompressing it would be unbounded work.
MAX_TRAILER = 16 << 20
# Extended headers are read whole by tarfile before a member reaches our
# loop (CPython 3.11 Lib/tarfile.py, as in Debian 12's 3.11.2: TarInfo.
# _proc_pax does fileobj.read(self._block(self.size)) for a pax 'x'/'g'/'X'
# header, _proc_gnulong the same for a GNU 'L'/'K' long name or link,
# _proc_sparse loops over GNU sparse extension blocks while their
# "isextended" byte is set, _proc_gnusparse_10 reads a GNU sparse 1.0 map
# until it has the count it claims). A header claiming gigabytes over a
# gzip stream of zeros would be allocated. `vfio-advisor snapshot` writes
# with tarfile's PAX format, which puts a name or link target that does not
# fit ustar's 100 bytes in a pax header as "path" / "linkpath" records; both
# are Linux paths, at most PATH_MAX = 4096 bytes (include/uapi/linux/
# limits.h), so its pax headers stay under 9 KiB, and it writes no GNU or
# sparse headers. 1 MiB per header is far beyond any real snapshot.
MAX_HEADER = 1 << 20
# All header reads for one member (extended headers, the headers after
# them, sparse maps): room for a pax header, a long name and a long link of
# MAX_HEADER each.
MAX_MEMBER_HEADERS = 4 << 20
# All header reads of one archive (a plain ustar header is not counted):
# the names _extract_snapshot keeps come from them. A member with a long
# name costs about 1.5 KiB here (pax header, its records, the ustar header
# after it), so this admits over 20,000 such members; snapshots of the lab
# captures hold 32 entries, none with a pax header.
MAX_HEADERS_TOTAL = 32 << 20
# Extended headers before one member: a pax header, a long name and a long
# link at most in the archives tar(1) and tarfile write. Each nests one
# TarInfo.fromtarfile call, so a run of them would otherwise end in a
# RecursionError at Python's recursion limit.
MAX_HEADER_CHAIN = 8

_PAX_TYPES = {tarfile.XHDTYPE: "pax", tarfile.SOLARIS_XHDTYPE: "pax",
              tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link"}


class _HeaderRefused(tarfile.TarError):
    """A header over our bounds. Not a tarfile.HeaderError on purpose:
    _proc_pax and _proc_gnulong turn a HeaderError from the next header into
    SubsequentHeaderError, TarFile.next that into ReadError, and
    TarFile.open("r") swallows a ReadError to try the next compression,
    ending in a many-line "file could not be opened successfully". A plain
    TarError passes all of them unchanged (TarFile.next re-raises any other
    exception) and _DAMAGED reports it as one line."""


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


class _HeaderReads:
    """Stands in for TarFile.fileobj while one member's headers are read:
    refuses a read past the member's and the archive's header budget before
    it is made, so no header can make tarfile allocate more than that."""

    def __init__(self, fileobj, offset: int, left_total: int):
        self._f = fileobj
        self.offset = offset  # the member's first header, for messages
        self.depth = 0
        self.used = 0
        self.left = min(MAX_MEMBER_HEADERS, left_total)
        self._archive_bound = left_total < MAX_MEMBER_HEADERS

    def read(self, n=-1):
        if n is None or n < 0 or n > self.left:
            if self._archive_bound:
                raise _HeaderRefused(f"the snapshot's headers take more than {_size(MAX_HEADERS_TOTAL)} "
                                     f"(reached at the entry at byte {self.offset})")
            raise _HeaderRefused(f"the headers of the entry at byte {self.offset} take more than "
                                 f"{_size(MAX_MEMBER_HEADERS)}")
        self.left -= n
        self.used += n
        return self._f.read(n)

    def __getattr__(self, name):
        return getattr(self._f, name)


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo whose header processing is bounded (see MAX_HEADER).

    TarInfo._proc_member is the one dispatch point: TarInfo.fromtarfile
    reads a 512-byte header and calls it, and it calls _proc_pax,
    _proc_gnulong, _proc_sparse or _proc_builtin (CPython 3.11 Lib/tarfile.py,
    whose comment names it the method to override). _tarfile_hookable checks
    that this Python still works that way before any snapshot is opened."""

    def _proc_member(self, tarfile_):
        reads = tarfile_.fileobj
        if not isinstance(reads, _HeaderReads):
            used_total = getattr(tarfile_, "_vfio_header_bytes", 0)
            reads = _HeaderReads(tarfile_.fileobj, self.offset, MAX_HEADERS_TOTAL - used_total)
            tarfile_.fileobj = reads
            try:
                return self._proc_bounded(tarfile_, reads)
            except (ValueError, RecursionError) as exc:
                # A malformed GNU sparse map: _proc_gnusparse_01 and _10 and
                # _apply_pax_info call int() and split() on archive bytes
                # unguarded (CPython 3.11), the ValueError escapes tarfile.
                raise _HeaderRefused(f"the headers of the entry at byte {self.offset} are damaged "
                                     f"({_reason(exc)})") from None
            finally:
                tarfile_.fileobj = reads._f
                tarfile_._vfio_header_bytes = used_total + reads.used
        return self._proc_bounded(tarfile_, reads)

    def _proc_bounded(self, tarfile_, reads: _HeaderReads):
        if self.type == tarfile.XGLTYPE:
            # `snapshot` never writes one, and tarfile 3.11 copies the global
            # records into every later member (_proc_pax: pax_headers.copy(),
            # _apply_pax_info: self.pax_headers = pax_headers.copy()), all
            # kept in TarFile.members: even a small one grows with the
            # member count.
            raise _HeaderRefused(f"the entry at byte {self.offset} is a pax global header, "
                                 "which no snapshot holds")
        kind = _PAX_TYPES.get(self.type)
        if kind and self.size > MAX_HEADER:
            raise _HeaderRefused(f"a {kind} header ({self.name[:80]!r} at byte {self.offset}) claims "
                                 f"{_size(self.size)} (limit {_size(MAX_HEADER)})")
        reads.depth += 1
        if reads.depth > MAX_HEADER_CHAIN:
            raise _HeaderRefused(f"the entry at byte {reads.offset} has more than "
                                 f"{MAX_HEADER_CHAIN} extended headers")
        return super()._proc_member(tarfile_)


def _tarfile_hookable() -> bool:
    """Does this Python's tarfile read every header through
    TarInfo._proc_member? True for CPython 3.11 (Debian 12's 3.11.2). The
    method is private: were it renamed, _BoundedTarInfo would silently bound
    nothing, so snapshots are refused instead (open_host_root)."""
    fromtarfile = getattr(tarfile.TarInfo.fromtarfile, "__func__", None)
    code = getattr(fromtarfile, "__code__", None)
    return (callable(getattr(tarfile.TarInfo, "_proc_member", None)) and code is not None
            and "_proc_member" in code.co_names)


def _open_tar(path: str) -> tarfile.TarFile:
    # TarFile.__init__ reads the first member already, hence tarinfo= here
    # and not on the members later.
    return tarfile.open(path, tarinfo=_BoundedTarInfo)


def _is_tarfile(path: str) -> bool:
    """tarfile.is_tarfile with bounded headers: it opens the archive, reading
    its first member, with the default TarInfo. Our refusal is not "not a
    tar archive" and passes through."""
    try:
        with _open_tar(path):
            return True
    except _HeaderRefused:
        raise
    except tarfile.TarError:
        return False


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
    count = 0
    while (member := tar.next()) is not None:
        # TarFile.next keeps every member it returns in TarFile.members, its
        # pax records (TarInfo.pax_headers) and sparse map included; nothing
        # here looks a member up again, so only the current one is kept.
        tar.members.clear()
        count += 1
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
                    # In pieces: a member of up to MAX_BYTES (a sparse one
                    # costs a few bytes of archive) is never held whole.
                    while source is not None:
                        chunk = _archive_read(source, 1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
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


def _archive_read(source, size: int) -> bytes:
    """A read of the archive's data, whose failures are the archive's: gzip
    checks CRC-32 and ISIZE when its decompressor meets the member's end,
    which a read inside the last entry's data can already do (1 in ~80 of
    the test's damaged archives), and gzip.BadGzipFile is an OSError that
    would read as this entry's file-system trouble. As a TarError it is
    reported as the damaged archive it is."""
    try:
        return source.read(size)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise tarfile.ReadError(_reason(exc)) from None


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
    if not _tarfile_hookable():
        raise UsageError(f"cannot unpack snapshot {path}: this Python's tarfile no longer reads headers "
                         "through TarInfo._proc_member (CPython 3.11), so their sizes cannot be bounded")
    try:
        is_tar = _is_tarfile(path)
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
        with _open_tar(path) as tar:
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


def is_snapshot_tree(root: str) -> bool:
    """Is this host tree a snapshot (SNAPSHOT.txt at its top, snapshot.py)?
    Its domains are the ones it holds: a name it lacks is not looked up in
    the libvirt of the machine replaying it."""
    return os.path.isfile(os.path.join(root, SNAPSHOT_NOTE))


SNAPSHOT_NOTE = "SNAPSHOT.txt"
