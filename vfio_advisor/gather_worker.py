"""Gather running domains' facts in a short-lived child process, for the daemon.

The daemon lives for weeks and samples a few files every few seconds.
Gathering a domain's facts (the engine: the domain XML through lxml, each
device's config space, pci.ids for its name, the host's /proc/interrupts and
IOMMU state) happens only at a domain event, but what it imports stays for
the life of the process that imported it: CPython never unloads a C
extension, and lxml.etree with its libxml2 and libxslt is ~4 MiB of RSS
alone (issue 12: the daemon's steady state must stay under 40 MB). So the
daemon runs `python -m vfio_advisor.gather_worker` once per domain event
(a resync gathers all of its domains in one child, which reads the host facts
once) and keeps only the facts it gets back (runtime.Watcher.follow).

Protocol, over the child's stdin and stdout: one pickled GatherRequest in,
one pickled list out, one entry per domain XML in the same order: the
DomainFacts, or a GatherFailure with a one-line reason. Pickle is safe here
because both ends are this program at the same version, run by the same
user; nothing else writes that pipe. The parent unpickles the fact types
(facts/model.py and what they hold), none of which imports lxml at module
level (facts/domain.py imports it where it parses).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import NamedTuple

# Gathering reads a handful of sysfs files per device and /proc/interrupts
# once: 0.1 s here, well under a second even in the system tier's TCG guest.
# The daemon waits for it inside a libvirt event callback, so a child that
# hangs (a stuck sysfs read on a dying device) holds the event loop: it is
# killed well before libvirtd drops a client that stopped answering its
# keepalives (libvirtd.conf defaults keepalive_interval = 5, keepalive_count
# = 5: about 30 s) and before the unit's watchdog (WatchdogSec=60).
GATHER_TIMEOUT = 20.0


class GatherRequest(NamedTuple):
    host_root: str
    domain_xmls: tuple[str, ...]


class GatherFailure(NamedTuple):
    """Why one domain could not be gathered: `xml` when its XML is not a
    usable domain (DomainXMLError), else `gather`."""

    kind: str  # "xml" | "gather"
    reason: str


def gather_in_child(host_root: str, domain_xmls: list[str] | tuple[str, ...],
                    timeout: float = GATHER_TIMEOUT) -> list:
    """The facts of each domain XML, gathered by a child process: a
    DomainFacts or a GatherFailure per XML. A child that cannot run, dies or
    answers nonsense gives a GatherFailure for every XML, never an exception."""
    if not domain_xmls:
        return []
    request = pickle.dumps(GatherRequest(host_root, tuple(domain_xmls)), pickle.HIGHEST_PROTOCOL)
    # The child must import this very copy of vfio_advisor, wherever it came
    # from: Debian's dist-packages, a clone install's PYTHONPATH, or a source
    # tree the daemon was started from with `python3 -m` (sys.path[0] is then
    # the cwd, which a child in another cwd does not see: the system tier's
    # guest runs the suite that way). So the directory holding this package
    # goes first on the child's PYTHONPATH, and its cwd is "/", so that `-m`
    # never imports from wherever the daemon happened to start.
    command = [sys.executable, "-m", "vfio_advisor.gather_worker"]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    try:
        done = subprocess.run(command, input=request, capture_output=True, timeout=timeout, cwd="/", env=env)
    except subprocess.TimeoutExpired:
        return _all_failed(domain_xmls, f"the gathering child took more than {timeout:g} s")
    except OSError as exc:
        return _all_failed(domain_xmls, f"cannot start {command[0]}: {exc.strerror or exc}")
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {done.returncode}"
        return _all_failed(domain_xmls, f"the gathering child failed: {why}")
    try:
        results = pickle.loads(done.stdout)
    except Exception as exc:  # noqa: BLE001 - a truncated answer (child killed mid-write)
        return _all_failed(domain_xmls, f"the gathering child's answer is unreadable: {type(exc).__name__}")
    if not isinstance(results, list) or len(results) != len(domain_xmls):
        return _all_failed(domain_xmls, "the gathering child's answer does not match the request")
    return results


def _all_failed(domain_xmls, reason: str) -> list:
    return [GatherFailure("gather", reason) for _ in domain_xmls]


def gather_all(request: GatherRequest) -> list:
    """In the child: one engine session (host facts read once) over every XML."""
    from vfio_advisor.engine import Engine
    from vfio_advisor.errors import DomainXMLError
    from vfio_advisor.facts.domain import parse_domain_xml
    from vfio_advisor.runtime import facts_to_keep

    engine = Engine(request.host_root)
    out: list = []
    for xml in request.domain_xmls:
        try:
            domain = parse_domain_xml(xml)
        except DomainXMLError as exc:
            out.append(GatherFailure("xml", str(exc)))
            continue
        try:
            # What the parent keeps (runtime.facts_to_keep), so that the host's
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
        sys.stderr.write(f"vfio-advisor gather_worker: bad request on stdin ({type(exc).__name__})\n")
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
    # Run as `-m`, this file is __main__; the answer must pickle the classes
    # by their importable name (vfio_advisor.gather_worker.GatherFailure),
    # which the parent resolves, so main() runs from the module proper.
    from vfio_advisor.gather_worker import main as module_main

    sys.exit(module_main())
