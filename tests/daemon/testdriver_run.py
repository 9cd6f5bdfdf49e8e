"""Drive the daemon's Service in-process against libvirt's test driver.

test:///default keeps one state per process, shared by every connection, so
this script opens its own admin connection next to the daemon's read-only
one, defines, starts and destroys domains, and records what the daemon
follows after each step. Prints one JSON document. Run in a subprocess:
libvirtaio binds to the first asyncio loop of a process.
"""

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

from vfio_advisor.sinks.journal import JournalSink
from vfio_advisor.daemon.service import DaemonConfig, Service

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples/demo-host"

HOSTDEV = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' "
           "bus='0x{bus:02x}' slot='0x00' function='0x{fn:x}'/></source><address type='pci' "
           "domain='0x0000' bus='0x00' slot='0x{slot:02x}' function='0x0'/></hostdev>")


def domain(name: str, hostdevs: list[tuple[int, int, int]]) -> str:
    devs = "".join(HOSTDEV.format(bus=b, fn=f, slot=s) for b, f, s in hostdevs)
    return (f"<domain type='kvm'><name>{name}</name><memory>1048576</memory><vcpu>2</vcpu>"
            f"<os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>"
            f"<devices>{devs}</devices></domain>")


class Recorder(JournalSink):
    """The daemon's journal sink, with a sender that records instead of sending."""

    def __init__(self):
        super().__init__("daemon", sender=self.record)
        self.findings, self.events = [], []

    def emit(self, finding, dom):
        self.findings.append(finding.rule_id)

    def record(self, fields):
        values = dict(f.split("=", 1) for f in fields)
        self.events.append(values.get("VFIO_ADVISOR_EVENT", values.get("VFIO_ADVISOR_RULE")))


async def settle(svc, predicate, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end and not predicate():
        await asyncio.sleep(0.02)
    return predicate()


AUDIO_ROW = re.compile(r"^( *28: +)(\d+)", re.M)  # vfio-intx(0000:05:00.1) in the demo host


def bump_audio(root: Path, by: int) -> None:
    """The HDMI audio's INTx line counts `by` more (CPU 0)."""
    path = root / "proc/interrupts"
    text = path.read_text()
    path.write_text(AUDIO_ROW.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + by:>{len(m.group(2))}}",
                                  text, count=1))


async def samples(svc, n: int) -> None:
    """Wait until the daemon has sampled n more times."""
    seen, last = 0, svc.watcher.last_sample
    while seen < n:
        await asyncio.sleep(0.02)
        if svc.watcher.last_sample != last:
            seen, last = seen + 1, svc.watcher.last_sample


async def scenario(out: dict, work: Path) -> None:
    rec, notes = Recorder(), []
    root = work / "root"
    shutil.copytree(DEMO / "root", root, symlinks=True)
    # The daemon's clock: the monotonic clock plus what the script skips ahead,
    # so that "settle seconds later" takes no real time.
    skipped = [0.0]
    cfg = DaemonConfig(connect="test:///default", host_root=str(root), interval=0.05,
                       settle=30, state_dir=None)
    svc = Service(cfg, sink=rec, notify=notes.append, clock=lambda: time.monotonic() + skipped[0])
    task = asyncio.ensure_future(svc.run())
    # At start: once READY (the domains running at start are followed then).
    await settle(svc, lambda: "READY=1" in notes)
    admin = libvirt.open("test:///default")

    def follows():
        return {n: sorted(d.devices) for n, d in sorted(svc.watcher.domains.items())}

    steps = [("at start", follows())]
    dom = admin.defineXML(domain("gpuvm", [(5, 0, 5), (5, 1, 6)]))
    await asyncio.sleep(0.2)
    steps.append(("defined, not started", follows()))
    dom.create()
    await settle(svc, lambda: "gpuvm" in svc.watcher.domains)
    steps.append(("started", follows()))
    # Booting: the audio counts on INTx before the settle time. Never advice.
    for _ in range(3):
        bump_audio(root, 500)
        await samples(svc, 2)
    out["findings_before_settle"] = list(rec.findings)
    # Past the settle time, still on INTx and counting: VA6001.
    skipped[0] += 31
    bump_audio(root, 500)
    await settle(svc, lambda: "VA6001" in rec.findings)
    out["findings_after_settle"] = list(rec.findings)
    second = admin.createXML(domain("nvmevm", [(6, 0, 7)]), 0)
    await settle(svc, lambda: "nvmevm" in svc.watcher.domains)
    steps.append(("transient started", follows()))
    dom.destroy()
    await settle(svc, lambda: "gpuvm" not in svc.watcher.domains)
    steps.append(("destroyed", follows()))
    second.destroy()
    await settle(svc, lambda: "nvmevm" not in svc.watcher.domains)
    steps.append(("transient destroyed", follows()))
    # a persistent domain started and stopped before the daemon looks at it
    dom.create()
    dom.destroy()
    await asyncio.sleep(0.3)
    steps.append(("started and destroyed at once", follows()))
    # a domain that vanishes between the event and our XMLDesc: a transient
    # one, created and destroyed before the daemon handles its STARTED event
    ghost = admin.createXML(domain("ghost", [(6, 0, 7)]), 0)
    ghost.destroy()
    try:
        admin.lookupByName("ghost")
        out["vanished"] = False
    except libvirt.libvirtError:
        out["vanished"] = True  # no such domain any more: it really vanished
    await asyncio.sleep(0.3)
    steps.append(("vanished", follows()))
    # and the daemon still follows the next domain
    third = admin.createXML(domain("after", [(6, 0, 7)]), 0)
    await settle(svc, lambda: "after" in svc.watcher.domains)
    steps.append(("after the vanished one", follows()))
    third.destroy()
    await settle(svc, lambda: "after" not in svc.watcher.domains)
    # A slow gathering (its child waiting on a slow sysfs read: here the real
    # child, 0.8 s late) holds neither the event loop nor the sampling, and
    # a domain stopped while it runs is not followed when it completes.
    real_gather = svc.gather

    def slow_gather(root, xmls):
        time.sleep(0.8)
        return real_gather(root, xmls)

    svc.gather = slow_gather
    slow = admin.createXML(domain("slow", [(6, 0, 7)]), 0)
    await settle(svc, lambda: bool(svc.pending))
    before = svc.watcher.last_sample
    await samples(svc, 3)
    out["sampled_while_gathering"] = svc.watcher.last_sample != before and bool(svc.pending)
    slow.destroy()
    await settle(svc, lambda: not svc.pending)
    await asyncio.sleep(0.1)
    steps.append(("stopped while its gathering ran", follows()))
    slow = admin.createXML(domain("slow", [(6, 0, 7)]), 0)
    await settle(svc, lambda: "slow" in svc.watcher.domains)
    steps.append(("slow, left running", follows()))
    slow.destroy()
    await settle(svc, lambda: "slow" not in svc.watcher.domains)
    svc.gather = real_gather
    samples_before = svc.watcher.last_sample
    await asyncio.sleep(0.2)
    svc.stopping.set()
    await task
    out.update(steps=steps, notes=notes, events=rec.events, findings=rec.findings,
               sampled=svc.watcher.last_sample is not None and samples_before is not None)


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
