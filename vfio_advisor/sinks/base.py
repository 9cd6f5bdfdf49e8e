"""The sink protocol: the only calls a shell (hook, daemon, `advise`) makes
on an output. Text, JSON, journal, metrics file and status file sinks all
follow it, so a shell hands its run to whichever sinks the user chose
without knowing their format.

    begin(facts)        a domain was analysed (advise, hook) or is now
                        followed (daemon): its findings come next. Report
                        sinks group findings under the domain and its devices.
    emit(finding, dom)  one finding, once per change of state (never per
                        sample); `dom` is the libvirt domain it is about, or
                        None for host-wide findings.
    event(event)        something that is not a finding, one of the kinds
                        below. A sink ignores the kinds it has no use for.
    close(summary)      the run ended. `summary` is a RunSummary for shells
                        that log one (the hook's run-summary entry), else None.

Event kinds (each a NamedTuple; its class attribute `kind` names it):

    ServiceEvent  "service"  the daemon's own life: started, reconnected,
                             reloaded, sample-failed, stopped, ... `name` is
                             the journal's VFIO_ADVISOR_EVENT field, `priority`
                             a syslog level. The journal sink raises OSError
                             when journald is gone, so that the daemon can
                             say it on stderr instead.
    SampleEvent   "sample"   the daemon took one sample of every followed
                             device (at each interval, also with no domain
                             running). `wall_time` is time.time() of the
                             sample (what Prometheus and a status page compare
                             with their clock), `monotonic` the daemon's clock,
                             `elapsed` the seconds since the previous sample
                             (None at the first: no rate yet). `devices()`
                             gives one DeviceSnapshot per followed device
                             (domain, bdf, mode, cumulative count, rate over
                             `elapsed`, observable), sorted by domain and BDF;
                             `open_findings()` one OpenFinding per emitted
                             finding whose condition still holds. Both are
                             worked out on the first call only, so a sample
                             costs nothing extra when no sink reads them. The
                             metrics file sink writes its textfile from them;
                             a status file sink keeps a rolling window of
                             `rate` per (domain, bdf). A device missing from
                             `devices()` is no longer followed (its domain
                             stopped). An unobservable device's (posted MSI)
                             rate is 0.0 and means nothing.
    Inconclusive  "inconclusive"  (findings.Inconclusive) a runtime rule holds
                             its finding back because the sample proves
                             nothing (an idle INTx counter: no guest driver
                             bound yet, or the device idle): rule_id, domain,
                             subject (host BDF), message saying what to do.
                             Once per device and rule until the state changes.
    FixesPlanned  "fixes"    advise planned the domain XML fix of each finding
                             of the domain begun last: {Finding.key: fix
                             object or None}.

A sink module is one file under sinks/ that implements these four methods;
nothing else of it is called from a shell (tests/test_architecture.py).
write_atomically is the one way a sink replaces a file.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Protocol, TextIO, Union, runtime_checkable

from vfio_advisor import libc

if TYPE_CHECKING:
    from vfio_advisor.facts.domain import Domain
    from vfio_advisor.facts.model import DomainFacts, HostFacts
    from vfio_advisor.findings import Finding, Inconclusive, RunCounts


class DeviceSnapshot(NamedTuple):
    """One followed device as of the last sample."""

    domain: str
    bdf: str
    mode: str  # intx | msi | msix | none | unknown
    count: int  # cumulative count of its vfio vectors
    rate: float  # interrupts/s over the last interval
    # False when the host cannot count its vectors: KVM posts its MSIs to the
    # vCPU (VT-d PI, AMD AVIC) and the host's vfio handler never runs.
    observable: bool = True


class OpenFinding(NamedTuple):
    """A finding whose condition still holds (one per domain, device and rule)."""

    domain: str | None  # None for host-wide findings
    rule: str  # rule ID
    severity: str  # info | warning | error
    subject: str | None = None  # the device's host BDF; None for a domain or host-wide finding


class ServiceEvent(NamedTuple):
    kind = "service"
    name: str  # started, reconnected, reloaded, sampling, sample-failed, stopped, ...
    message: str
    priority: int = 6  # syslog level (sys/syslog.h): 3 err, 4 warning, 6 info


class SampleEvent:
    """One daemon sample; see the module docstring."""

    kind = "sample"
    __slots__ = ("wall_time", "monotonic", "elapsed", "_devices", "_open")

    def __init__(self, wall_time: float, monotonic: float, elapsed: float | None,
                 devices: Callable[[], list[DeviceSnapshot]],
                 open_findings: Callable[[], list[OpenFinding]]):
        self.wall_time = wall_time
        self.monotonic = monotonic
        self.elapsed = elapsed
        self._devices: Callable | list = devices
        self._open: Callable | list = open_findings

    def devices(self) -> list[DeviceSnapshot]:
        if callable(self._devices):
            self._devices = self._devices()
        return self._devices

    def open_findings(self) -> list[OpenFinding]:
        if callable(self._open):
            self._open = self._open()
        return self._open


class FixesPlanned(NamedTuple):
    kind = "fixes"
    fixes: dict  # {Finding.key: fix object (fix/advice.py) or None}


Event = Union[ServiceEvent, SampleEvent, "Inconclusive", FixesPlanned]


class RunSummary(NamedTuple):
    """What close() gets from a shell that logs a summary (the hook)."""

    finding: Finding  # the run-summary finding, its message holding the counts
    domain: Domain | None
    findings: tuple[Finding, ...]
    counts: RunCounts  # the same counts, computed once (findings.RunCounts)
    devices: int  # assigned PCI devices analysed


@runtime_checkable
class Sink(Protocol):
    def begin(self, facts: DomainFacts) -> None: ...

    def emit(self, finding: Finding, domain: Domain | None) -> None: ...

    def event(self, event: Event) -> None: ...

    def close(self, summary: RunSummary | None = None) -> None: ...


# The protocol's methods, for tests/test_architecture.py.
PROTOCOL = ("begin", "emit", "event", "close")


class ReportSink:
    """Collects a Report (sinks/report.py) and renders it at close()."""

    def __init__(self, out: TextIO, host_root: str, host: HostFacts | None,
                 errors: list[tuple[str, str]] | None = None):
        from vfio_advisor.sinks.report import Report  # noqa: PLC0415

        self.out = out
        self.report = Report(host_root=host_root, host=host, errors=list(errors or []))

    def begin(self, facts: DomainFacts) -> None:
        from vfio_advisor.sinks.report import DomainReport  # noqa: PLC0415

        self.report.domains.append(DomainReport(facts, []))

    def emit(self, finding: Finding, domain: Domain | None) -> None:
        for d in reversed(self.report.domains):
            if d.facts.domain.name == finding.domain:
                d.findings.append(finding)
                return
        raise ValueError(f"finding for {finding.domain!r} before begin()")

    def event(self, event: Event) -> None:
        if event.kind == "fixes":
            self.report.attach_fixes(event.fixes)

    def render(self) -> None:
        raise NotImplementedError

    def close(self, summary: RunSummary | None = None) -> None:
        for d in self.report.domains:
            d.findings.sort(key=lambda f: f.sort_key())
        self.render()


class CallbackSink:
    """Hands each finding to a function, and nothing else: for programs that
    embed the Watcher and keep its findings themselves (the lab's replay,
    the bench, the fleet simulation)."""

    def __init__(self, on_finding: Callable[[Finding, Domain | None], None]):
        self.on_finding = on_finding

    def begin(self, facts: DomainFacts) -> None:
        pass

    def emit(self, finding: Finding, domain: Domain | None) -> None:
        self.on_finding(finding, domain)

    def event(self, event: Event) -> None:
        pass

    def close(self, summary: RunSummary | None = None) -> None:
        pass


def _temporary(directory: str, prefix: str, suffix: str) -> tuple[int, str]:
    """An exclusively created file in `directory` (O_EXCL, mode 0600), as
    tempfile.mkstemp makes it, without importing tempfile (and with it
    shutil, random, bz2 and lzma: 0.6 MB of the daemon's RSS)."""
    n = 0
    while True:
        path = os.path.join(directory, f"{prefix}{os.getpid()}-{n}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            n += 1  # a leftover of a killed run, or another writer


# writev(2) takes at most this many buffers (Linux's UIO_MAXIOV,
# include/uapi/linux/uio.h; glibc's IOV_MAX): EINVAL past it.
_IOV_MAX = 1024


def write_atomically(path: str, text: str | bytes | Iterable[str | bytes | bytearray], mode: int = 0o644,
                     prefix: str = ".vfio-advisor-", durable: bool = True) -> None:
    """Replace `path` with `text` (a string or bytes, or pieces of either
    written one after the other, strings as UTF-8) so that a reader sees
    the old file or the new one, never a part: rename(2) within one
    directory is atomic. The pieces go to writev(2) as they are, up to
    _IOV_MAX a call: a file of many pieces costs a few system calls, not
    one a piece. The temporary name does not end in .prom, so
    node_exporter's textfile collector (which reads only *.prom) skips it.
    `mode` 0644 by default: node_exporter runs as its own user. `durable`:
    fsync the file and its directory, so the new text survives a crash
    (the state file); the metrics file, rewritten at every sample, skips
    it: after a crash its next write replaces whatever is there, and two
    fsyncs per sample would be two disk flushes every interval for the
    daemon's life. Such a file replaces the old one by exchanging the two
    names (_exchange), not by renaming over it."""
    if isinstance(text, str):
        buffers = [text.encode("utf-8")]
    elif isinstance(text, (bytes, bytearray)):
        buffers = [text]
    else:
        buffers = [piece.encode("utf-8") if isinstance(piece, str) else piece for piece in text]
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _temporary(directory, prefix, ".tmp")
    try:
        try:
            _write_all(fd, buffers)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        if durable or not _exchange(tmp, path):
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if not durable:
        return
    # The rename is durable only once the directory is synced.
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# renameat2(2)'s flag (include/uapi/linux/fs.h) and the *at calls' "the
# current directory" (AT_FDCWD, include/uapi/linux/fcntl.h).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(tmp: str, path: str) -> bool:
    """Swap `tmp` (the new text) with `path` atomically and delete the old
    text: renameat2(RENAME_EXCHANGE), Linux 3.15 (ext4, tmpfs; XFS from 4.0,
    btrfs from 4.7), glibc 2.28. False, with both files as they were, where
    it cannot (no such file yet, a file system or libc without it): the
    caller renames over it then.

    Why not rename(2) over the old file: ext4 (its default auto_da_alloc,
    Documentation/admin-guide/ext4.rst) then allocates and starts writing
    the new file's blocks at once, so every version of a file rewritten at
    each sample went to the disk: 1.8 MB every 5 s for the status file at
    512 devices (measured here: 74 MB written for 40 rewrites against 1.9 MB
    exchanged). Exchanged and unlinked, a version is gone before the
    writeback's 30 s expiry (vm.dirty_expire_centisecs) and never written."""
    renameat2 = libc.function("renameat2")
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE) != 0:
        # ENOENT (the first write), EINVAL or ENOSYS (no exchange here): nothing moved.
        return False
    try:
        os.unlink(tmp)  # now the old text
    except FileNotFoundError:
        pass
    return True


def _write_all(fd: int, buffers: list) -> None:
    """writev(2) of every byte of `buffers` (bytes or bytearray), in calls
    of up to _IOV_MAX. A regular file's writev writes all of it but when
    interrupted by a signal or out of space (then the next call raises
    ENOSPC): a short write resumes where it stopped."""
    i = 0
    while i < len(buffers):
        batch = buffers[i:i + _IOV_MAX]
        written = os.writev(fd, batch)
        if written == sum(map(len, batch)):
            i += len(batch)
            continue
        for piece in batch:
            if written < len(piece):
                break
            written -= len(piece)
            i += 1
        # A copy, not a memoryview: a view of a sink's bytearray would keep
        # it from growing (BufferError) for as long as the view lives.
        buffers = buffers[:i] + [buffers[i][written:]] + buffers[i + 1:]


def atime_updates(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Does a read of `path` update its atime? Not on a mount with
    noatime (proc(5), /proc/pid/mountinfo: field 6, the per-mount
    options), nor where the mounts cannot be read (then: assume not)."""
    directory = os.path.realpath(os.path.dirname(path) or ".")
    best, options = "", ""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 6:
                    continue
                # Spaces, tabs, newlines and backslashes in a mount point are octal escapes.
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
                inside = directory == point or directory.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):  # the last of stacked mounts wins
                    best, options = point, fields[5]
    except OSError:
        return False
    return bool(best) and "noatime" not in options.split(",")


def read_since_written(path: str) -> bool:
    """Has `path` been read since it was last written? Linux updates a
    file's atime at the first read after a write, relatime included
    (fs/inode.c relatime_need_update: mtime not older than atime), and a
    file written anew starts with atime at or before its mtime. True also
    when it is gone or cannot be looked at (write it again)."""
    try:
        st = os.stat(path)
    except OSError:
        return True
    return st.st_atime_ns > st.st_mtime_ns
