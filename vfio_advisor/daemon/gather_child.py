"""Gather running domains' facts in a short-lived child process, for the daemon.

The daemon lives for weeks and samples a few files every few seconds.
Gathering a domain's facts (the engine: the domain XML through lxml, each
device's config space, pci.ids for its name, the host's /proc/interrupts and
IOMMU state) happens only at a domain event, but what it imports stays for
the life of the process that imported it: CPython never unloads a C
extension, and lxml.etree with its libxml2 and libxslt is ~4 MiB of RSS
alone (bench/daemon_bench.py holds the daemon's steady state under 40 MB). So the
daemon runs this module's main() in a child (`python3 -P -c <bootstrap>`,
below) once per domain event (a resync gathers all of its domains in one
child, which reads the host facts once) and keeps only the facts it gets
back (daemon.watch.Watcher.follow).

Protocol, over the child's stdin and stdout: one pickled GatherRequest in,
one pickled list out, one entry per domain XML in the same order: the
DomainFacts, or a GatherFailure with a one-line reason. Pickle is safe here
because both ends are this program, run by the same user; nothing else
writes that pipe. "This program" means the same files: a reinstall under a
running daemon (`vfio-advisor install` after a pull; the Debian package
restarts the unit itself) would have the child pickle fact types the parent
no longer matches, so the request carries a fingerprint of the package's
files as the daemon loaded them, and a child that finds other files answers
"restart vfio-advisor" instead. The parent unpickles the fact types
(facts/model.py and what they hold), none of which imports lxml at module
level (facts/domain.py imports it where it parses).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from typing import NamedTuple

# Gathering reads a handful of sysfs files per device and /proc/interrupts
# once: 0.1 s here, well under a second even in the system tier's TCG guest.
# The daemon waits for it in a worker thread (daemon.service.Service), so its event
# loop and sampling go on; a child that hangs (a stuck sysfs read on a dying
# device) only delays the next domain events' gathering, which queue behind
# it, and is killed after this long.
GATHER_TIMEOUT = 10.0
# After SIGKILL the daemon waits this long for the child to go. A child in
# an uninterruptible sysfs read (config space of a device stuck in reset
# waits in drivers/pci/access.c, pci_wait_cfg) dies only when that read
# returns; it is left to be reaped later (_reap_stragglers), never waited for.
KILL_WAIT = 1.0
# Children killed but not yet gone, reaped at the next gathering.
_stragglers: list[subprocess.Popen] = []
# The child's bootstrap. -P (Python 3.11): nothing from the cwd or a script
# directory on sys.path. The directory holding the daemon's own copy of
# vfio_advisor goes first unless it is on the path already (a site directory
# such as Debian's dist-packages, or a clone install's PYTHONPATH, which the
# child inherits): a source tree the daemon was started from with
# `python3 -m` (sys.path[0] the cwd: the system tier's guest runs the suite
# so) is found, and no site directory is put ahead of the standard library.
_BOOTSTRAP = ("import sys; root = sys.argv[1]; root in sys.path or sys.path.insert(0, root); "
              "from vfio_advisor.daemon.gather_child import main; sys.exit(main())")


class GatherRequest(NamedTuple):
    host_root: str  # absolute: the child runs in "/"
    domain_xmls: tuple[str, ...]
    fingerprint: str = ""  # package_fingerprint() as the daemon loaded it


class GatherFailure(NamedTuple):
    """Why one domain could not be gathered: `xml` when its XML is not a
    usable domain (DomainXMLError), else `gather`."""

    kind: str  # "xml" | "gather" | "stopped" (the child got SIGTERM/SIGINT: the daemon is stopping)
    reason: str


# vfio_advisor/, two levels up from vfio_advisor/daemon/gather_child.py: the
# fingerprint covers the whole package, and its parent goes on the child's path.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_fingerprint: str | None = None


def package_fingerprint() -> str:
    """Names, sizes and mtimes of the package's .py files, hashed: taken once
    per process (the daemon takes it as it starts, daemon.service.main), so that it
    describes the code this process runs."""
    global _fingerprint
    if _fingerprint is None:
        # zlib.crc32, not hashlib: this detects a reinstall, it does not
        # authenticate anything, and hashlib (OpenSSL's _hashlib) would be
        # 0.65 MiB more of the daemon's RSS; zlib is loaded already.
        import zlib  # noqa: PLC0415

        entries = []
        for dirpath, dirnames, filenames in os.walk(_PACKAGE_DIR):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(f for f in filenames if f.endswith(".py")):
                st = os.stat(os.path.join(dirpath, name))
                rel = os.path.relpath(os.path.join(dirpath, name), _PACKAGE_DIR)
                entries.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
        _fingerprint = f"{len(entries)}-{zlib.crc32(chr(10).join(entries).encode()):08x}"
    return _fingerprint


def gather_in_child(host_root: str, domain_xmls: list[str] | tuple[str, ...],
                    timeout: float = GATHER_TIMEOUT) -> list:
    """The facts of each domain XML, gathered by a child process: a
    DomainFacts or a GatherFailure per XML. A child that cannot run, dies or
    answers nonsense gives a GatherFailure for every XML, never an exception."""
    if not domain_xmls:
        return []
    _reap_stragglers()
    # Absolute before it crosses: the child runs in "/", the daemon wherever
    # it was started (`--host-root captures/x` from a checkout).
    request = pickle.dumps(GatherRequest(os.path.abspath(host_root), tuple(domain_xmls), package_fingerprint()),
                           pickle.HIGHEST_PROTOCOL)
    command = [sys.executable, "-P", "-c", _BOOTSTRAP, os.path.dirname(_PACKAGE_DIR)]
    try:
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd="/")
    except OSError as exc:
        return _all_failed(domain_xmls, f"cannot start {command[0]}: {exc.strerror or exc}")
    try:
        out, err = child.communicate(request, timeout=timeout)
    except subprocess.TimeoutExpired:
        # subprocess.run would wait for the killed child without a bound
        # (CPython 3.11 Lib/subprocess.py: kill(), then wait()).
        child.kill()
        try:
            child.communicate(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            _stragglers.append(child)
        return _all_failed(domain_xmls, f"the gathering child took more than {timeout:g} s")
    if child.returncode in (-signal.SIGTERM, -signal.SIGINT):
        # systemd stops a unit by signalling its whole cgroup, child included.
        return [GatherFailure("stopped", "the daemon is stopping") for _ in domain_xmls]
    if child.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {child.returncode}"
        return _all_failed(domain_xmls, f"the gathering child failed: {why}")
    try:
        results = pickle.loads(out)
    except Exception as exc:  # noqa: BLE001 - a truncated answer (child killed mid-write)
        return _all_failed(domain_xmls, f"the gathering child's answer is unreadable: {type(exc).__name__}")
    if not isinstance(results, list) or len(results) != len(domain_xmls):
        return _all_failed(domain_xmls, "the gathering child's answer does not match the request")
    return results


def _all_failed(domain_xmls, reason: str) -> list:
    return [GatherFailure("gather", reason) for _ in domain_xmls]


def _reap_stragglers() -> None:
    for child in list(_stragglers):
        if child.poll() is not None:
            _stragglers.remove(child)


def gather_all(request: GatherRequest) -> list:
    """In the child: one engine session (host facts read once) over every XML."""
    from vfio_advisor.engine import Engine
    from vfio_advisor.errors import DomainXMLError
    from vfio_advisor.facts.domain import parse_domain_xml
    from vfio_advisor.daemon.state import facts_to_keep

    if request.fingerprint and request.fingerprint != package_fingerprint():
        return [GatherFailure("gather", "vfio-advisor's files changed since the daemon started "
                              "(a reinstall or update): restart it (systemctl restart vfio-advisor)")
                for _ in request.domain_xmls]
    engine = Engine(request.host_root)
    out: list = []
    for xml in request.domain_xmls:
        try:
            domain = parse_domain_xml(xml)
        except DomainXMLError as exc:
            out.append(GatherFailure("xml", str(exc)))
            continue
        try:
            # What the parent keeps (daemon.state.facts_to_keep), so that the host's
            # whole /proc/interrupts is never pickled across.
            out.append(facts_to_keep(engine.gather(domain)))
        except Exception as exc:  # noqa: BLE001 - one odd domain must not cost the others
            out.append(GatherFailure("gather", f"{type(exc).__name__}: {exc}"))
    return out


def main() -> int:
    try:
        request = pickle.loads(sys.stdin.buffer.read())
        if not isinstance(request, GatherRequest):
            raise TypeError("not a GatherRequest")
    except Exception as exc:  # noqa: BLE001
        sys.stderr.write(f"vfio-advisor gather_child: bad request on stdin ({type(exc).__name__})\n")
        return 2
    try:
        answer = pickle.dumps(gather_all(request), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - e.g. a host tree that vanished: one line for the daemon's log
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.buffer.write(answer)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    # Run as `-m` (by hand), this file is __main__; the answer must pickle
    # the classes by their importable name (vfio_advisor.daemon.gather_child.
    # GatherFailure), which the parent resolves, so main() runs from the
    # module proper (the daemon's bootstrap imports it so too).
    from vfio_advisor.daemon.gather_child import main as module_main

    sys.exit(module_main())
