"""Replay a lab scenario's successive captures through the daemon's runtime
Watcher, with the guest's own /proc/uptime as the clock, logging through the
journald sink. Prints one JSON line per finding.

    python -m tests.lab.replay DOMAIN_XML SETTLE STORM_RATE STATE_DIR|- CAPTURE_DIR...
"""

from __future__ import annotations

import json
import sys

from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.daemon.state import StateStore
from vfio_advisor.daemon.watch import RuntimeConfig, Watcher
from vfio_advisor.sinks.base import CallbackSink
from vfio_advisor.sinks.journal import JournalSink


def main(argv: list[str]) -> int:
    xml, settle, storm, state, moments = argv[0], float(argv[1]), float(argv[2]), argv[3], argv[4:]
    clock = {"now": 0.0}

    def uptime(moment: str) -> float:
        with open(f"{moment}/proc/uptime") as f:
            return float(f.read().split()[0])

    sink = JournalSink("daemon")
    emitted = []

    def emit(finding, domain):
        sink.emit(finding, domain)
        emitted.append({"rule": finding.rule_id, "subject": finding.subject, "message": finding.message})

    clock["now"] = uptime(moments[0])
    watcher = Watcher(HostRoot(moments[0]), RuntimeConfig(settle=settle, storm_rate=storm, storm_samples=1),
                      CallbackSink(emit), StateStore(None if state == "-" else state), clock=lambda: clock["now"],
                      pci_ids=PciIds(None))
    with open(xml, "rb") as f:
        # The domain started at the first moment's uptime minus nothing: the
        # lab's guest is the host here, and its devices were set up just before.
        watcher.add_domain(parse_domain_xml(f.read()), started_at=clock["now"])
    for moment in moments:
        clock["now"] = uptime(moment)
        watcher.host = HostRoot(moment)
        watcher.sample()
    for e in emitted:
        print(json.dumps(e))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
