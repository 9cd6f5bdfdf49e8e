"""Child of test_event_churn: the daemon's Service in-process on libvirt's
test driver (test:///default: one state per process, so an admin connection
here starts and destroys domains under the daemon's read-only one), with
real gathering children. CYCLES transient domains, each under a new name
with the GPU and audio assigned, are started and destroyed: 2 x CYCLES
lifecycle events. Prints one JSON document. A subprocess: libvirtaio binds
to the first asyncio loop of a process.

Usage: churn_run.py HOST_ROOT CYCLES SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import libvirt
import libvirtaio

from tests.faults.support import node_file  # noqa: F401 - the scene's domain XML below
from vfio_advisor.daemon.service import DaemonConfig, Service
from vfio_advisor.sinks.base import CallbackSink
from vfio_advisor.testing.scenes import domain_xml, gpu_audio_hostdevs


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class CountingService(Service):
    """The Service, counting the lifecycle callbacks libvirt delivers."""

    seen = 0

    def _on_lifecycle(self, *args) -> None:
        self.seen += 1
        super()._on_lifecycle(*args)


async def churn(root: str, cycles: int, seconds: float) -> dict:
    admin = libvirt.open("test:///default")
    events = []
    service = CountingService(DaemonConfig(connect="test:///default", host_root=root, interval=0.05,
                                           settle=0.1, state_dir=None),
                              sink=CallbackSink(lambda f, d: None), notify=events.append)
    runner = asyncio.ensure_future(service.run())
    while "READY=1" not in events:
        await asyncio.sleep(0.02)
    gap = seconds / cycles
    rss = {}
    followed_while_running = 0
    t0 = time.monotonic()
    for k in range(cycles):
        name = f"churn{k:03d}"
        xml = domain_xml(name, gpu_audio_hostdevs()).replace("type='kvm'", "type='test'", 1)
        dom = admin.createXML(xml, 0)
        await asyncio.sleep(gap / 2)
        if name in service.watcher.domains:
            followed_while_running += 1
        dom.destroy()
        await asyncio.sleep(gap / 2)
        if k + 1 in (cycles // 4, cycles):
            await service.settled(30)
            await asyncio.sleep(0.2)
            import gc  # noqa: PLC0415
            gc.collect()
            rss[k + 1] = rss_kib()
    # The last one started and stayed: it must be followed once settled.
    last = admin.createXML(domain_xml("churn-last", gpu_audio_hostdevs()).replace("type='kvm'", "type='test'", 1), 0)
    end = time.monotonic() + 30
    while "churn-last" not in service.watcher.domains and time.monotonic() < end:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    out = {
        "events_seen": service.seen,
        "followed": sorted(service.watcher.domains),
        "devices": service.watcher.device_count,
        "generations": len(service.generations),
        "watched": len(service.watcher.sampler.watched),
        "open": len(service.watcher.open),
        "rss_kib": rss,
        "followed_while_running": followed_while_running,
        "status": [e for e in events if e.startswith("STATUS=")][-1],
        "seconds": elapsed,
    }
    last.destroy()
    service.stopping.set()
    await runner
    admin.close()
    return out


def main() -> int:
    root, cycles, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    libvirt.registerErrorHandler(lambda *_: None, None)
    print(json.dumps(loop.run_until_complete(churn(root, cycles, seconds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
