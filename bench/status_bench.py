"""The status sink (vfio_advisor/sinks/status.py) alone at scale: 512
followed devices (128 domains of 4), a sample every 5 s of wall clock, the
file rewritten at every sample as while the Cockpit page is open
(unread_rewrite=0). Prints the file's size, the sink's CPU per sample once
the windows are full (event() as the daemon calls it, and the write inside
it), and its RSS when the windows filled and at the end.

    python bench/status_bench.py [--samples 300] [--devices 512] [--dir DIR]

Run it against another checkout with PYTHONPATH=that/checkout (it imports
vfio_advisor from the path first): the machine's speed drifts over minutes,
so compare two trees by alternating runs.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

from vfio_advisor.sinks.base import DeviceSnapshot, SampleEvent
from vfio_advisor.sinks.status import MAX_POINTS, StatusFileSink


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--devices", type=int, default=512)
    ap.add_argument("--dir", default=None, help="where the file goes (default: a temporary directory on /var/tmp)")
    args = ap.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="status-bench-", dir="/var/tmp")
    path = os.path.join(work, "status.json")
    rng = random.Random(1)
    keys = [(f"vm{k // 4:03d}", f"0000:{k % 256:02x}:{k // 256:02x}.{k % 4}") for k in range(args.devices)]
    modes = {key: rng.choice(["msix", "msix", "msi", "intx"]) for key in keys}
    observable = {key: rng.random() > 0.1 for key in keys}  # a tenth posted: null rates
    counts = dict.fromkeys(keys, 0)
    now = [1764590000.0]
    sink = StatusFileSink(path, "qemu:///system", "/", 5.0, clock=lambda: now[0], unread_rewrite=0)
    write_cpu = [0.0]
    write = sink.write

    def timed_write():
        t0 = time.process_time()
        write()
        write_cpu[0] += time.process_time() - t0

    sink.write = timed_write
    full_at = min(args.samples // 2, int(sink.window / 5.0) + 1)  # the windows are full from here on
    event_cpu = 0.0
    rss_full = None
    for n in range(args.samples):
        now[0] += 5.0 + rng.uniform(-0.002, 0.002)
        if rng.random() < 0.02:  # a mode change now and then (a guest driver loading)
            key = rng.choice(keys)
            modes[key] = rng.choice(["intx", "msi", "msix"])
        snapshot = []
        for key in keys:
            delta = rng.randrange(0, 60000)
            counts[key] += delta
            snapshot.append(DeviceSnapshot(key[0], key[1], modes[key], counts[key], delta / 5.0013,
                                           observable[key]))
        event = SampleEvent(now[0], float(n), 5.0, lambda s=snapshot: s, list)
        if n == full_at:
            event_cpu, write_cpu[0], rss_full = 0.0, 0.0, rss_mib()
        t0 = time.process_time()
        sink.event(event)
        event_cpu += time.process_time() - t0
    measured = args.samples - full_at
    print(f"vfio_advisor={sys.modules['vfio_advisor'].__file__}")
    print(f"devices={args.devices} samples={args.samples} max_points={MAX_POINTS} "
          f"file_bytes={os.path.getsize(path)}")
    print(f"event_ms={1000 * event_cpu / measured:.3f} write_ms={1000 * write_cpu[0] / measured:.3f} "
          f"(CPU per sample over the last {measured}, windows full)")
    print(f"rss_mib_full={rss_full:.2f} rss_mib_end={rss_mib():.2f}")
    if not args.dir:
        os.unlink(path)
        os.rmdir(work)


if __name__ == "__main__":
    main()
