"""Drive the daemon's Service in-process against libvirt's test driver
through a recorded guest change and the guest's restarts (a domain destroy
and start: a new libvirt domain ID), with the demo host's interrupt table
rewritten as the guest's driver would leave it. Prints one JSON document.
Run in a subprocess: libvirtaio binds to the first asyncio loop of a process.

The change is recorded with guest/changes.py's `record`, as `fix --guest
--apply` does after reading the value back: the test driver has no guest
agent (tests/guestagent runs the real one)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import libvirt
import libvirtaio

from tests.daemon.testdriver_run import DEMO, bump_audio, domain, samples, settle
from vfio_advisor.daemon.service import DaemonConfig, Service
from vfio_advisor.guest.changes import record
from vfio_advisor.sinks.journal import JournalSink

AUDIO = "0000:05:00.1"
INTX_ROW = re.compile(r"^ *28: .*vfio-intx\(0000:05:00\.1\)\n", re.M)
MSI_ROW = re.compile(r"^ *51: .*vfio-msi\[0\]\(0000:05:00\.1\)\n", re.M)


def audio_on_msi(root: Path, on: bool) -> None:
    """The audio's vectors as vfio-pci leaves them: its INTx row (IRQ 28), or
    one vfio-msi vector (IRQ 51) once the guest driver enabled MSI."""
    path = root / "proc/interrupts"
    text = path.read_text()
    intx = ("  28:     448207" + "          0" * 7 + "  IR-IO-APIC   4-fasteoi   vfio-intx(0000:05:00.1)\n")
    msi = ("  51:       1200" + "          0" * 7 + "  IR-PCI-MSI-edge      vfio-msi[0](0000:05:00.1)\n")
    text = INTX_ROW.sub("", MSI_ROW.sub("", text))
    lines = text.splitlines(True)
    lines.insert(1, msi if on else intx)
    path.write_text("".join(lines))


async def scenario(out: dict, work: Path) -> None:
    rec, notes = Recorder(), []
    root, state = work / "root", work / "state"
    shutil.copytree(DEMO / "root", root, symlinks=True)
    skipped = [0.0]
    cfg = DaemonConfig(connect="test:///default", host_root=str(root), interval=0.05,
                       settle=30, state_dir=str(state))
    svc = Service(cfg, sink=rec, notify=notes.append, clock=lambda: time.monotonic() + skipped[0])
    task = asyncio.ensure_future(svc.run())
    await settle(svc, lambda: "READY=1" in notes)
    admin = libvirt.open("test:///default")
    dom = admin.defineXML(domain("gpuvm", [(5, 0, 5), (5, 1, 6)]))

    async def start() -> None:
        dom.create()
        await settle(svc, lambda: "gpuvm" in svc.watcher.domains
                     and svc.watcher.domains["gpuvm"].run_id == dom.ID())

    async def settled_and_counting() -> None:
        skipped[0] += 31
        for _ in range(3):
            bump_audio(root, 500)
            await samples(svc, 2)

    async def stop() -> None:
        dom.destroy()
        await settle(svc, lambda: "gpuvm" not in svc.watcher.domains)

    # Run 1: on INTx; the change is made in it: VA6001, and the change waits.
    await start()
    out["run_ids"] = [dom.ID()]
    record(str(state), "gpuvm", [{"key": AUDIO, "host_bdf": AUDIO, "os": "windows",
                                  "target": "MSISupported=1 for PCI\\VEN_10DE&DEV_10F0"}],
           run_id=dom.ID())
    await settled_and_counting()
    out["before_restart"] = list(rec.findings)
    await stop()
    # Run 2: the guest driver enabled MSI: VA6009, the change confirmed.
    audio_on_msi(root, True)
    await start()
    out["run_ids"].append(dom.ID())
    await settle(svc, lambda: "VA6009" in rec.findings)
    await settled_and_counting()
    out["after_restart_msi"] = list(rec.findings)
    await stop()
    # Run 3: the same change is not said again (the state file remembers it).
    await start()
    await settled_and_counting()
    out["run_3"] = list(rec.findings)
    # A second change in run 3; run 4 keeps the audio on INTx, counting: VA6010.
    record(str(state), "gpuvm", [{"key": AUDIO, "host_bdf": AUDIO, "os": "windows",
                                  "target": "MSISupported=1 for PCI\\VEN_10DE&DEV_10F0"}],
           run_id=dom.ID())
    await stop()
    audio_on_msi(root, False)
    await start()
    await samples(svc, 3)
    out["run_4_booting"] = list(rec.findings)
    await settled_and_counting()
    await settle(svc, lambda: "VA6010" in rec.findings)
    out["run_4_settled"] = list(rec.findings)
    # A third change, then a guest reboot in the same run (same domain ID):
    # libvirt's qemu driver sends REBOOT, the test driver none, so the
    # daemon's own handler is called as libvirt would call it.
    await asyncio.sleep(1.1)  # the records' time stamps are whole seconds apart in "at"
    record(str(state), "gpuvm", [{"key": AUDIO, "host_bdf": AUDIO, "os": "windows",
                                  "target": "MSISupported=1, third"}], run_id=dom.ID())
    await samples(svc, 2)
    out["before_reboot"] = list(rec.findings)
    audio_on_msi(root, True)
    svc._on_reboot(admin, admin.lookupByName("gpuvm"), None)
    # One guest restart can be several REBOOT events in a row (QEMU's RESET
    # as the kernel and then the firmware reset the machine).
    svc._on_reboot(admin, admin.lookupByName("gpuvm"), None)
    await settle(svc, lambda: rec.findings.count("VA6009") == 2)
    out["after_reboot"] = list(rec.findings)
    await stop()
    dom.undefine()
    svc.stopping.set()
    await task
    out["journal"] = rec.entries


class Recorder(JournalSink):
    """The daemon's journal sink with a sender that keeps each entry's fields."""

    def __init__(self):
        super().__init__("daemon", sender=self.record)
        self.findings, self.entries = [], []

    def emit(self, finding, dom):
        self.findings.append(finding.rule_id)
        super().emit(finding, dom)

    def record(self, fields):
        self.entries.append(dict(f.split("=", 1) for f in fields))


def main() -> int:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    libvirt.registerErrorHandler(lambda *_: None, None)
    out: dict = {}
    with tempfile.TemporaryDirectory() as work:
        loop.run_until_complete(scenario(out, Path(work)))
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
